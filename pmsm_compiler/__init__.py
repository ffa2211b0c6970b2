"""pmsm-compiler: quantized ANN (PQA) -> spiking AIF network, lossless at the first timestep."""

__version__ = "0.1.0"
