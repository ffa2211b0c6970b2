"""Test tools: a step-by-step reference for compiled SNNs (``reference``) and a differential
fuzzer of the compiler (``fuzz``). Independent of ``pmsm_compiler.runtime``, which they check."""
