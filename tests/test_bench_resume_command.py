"""bench/resume_command.py: the command that resumes a run on another machine."""

import pytest

from bench_scripts import load_bench_script

module = load_bench_script("resume_command")

LOG = ("command: pmsm-train --data /work/shared/data/cifar10 --model resnet20 --act pqa --epochs 120 "
       "--threads 1 --out training_state/long120/resnet20_pqa --no-progress\n{\"epoch\": 1}\n"
       "command: pmsm-train --data ../shared/data/cifar10 --model resnet20 --act pqa --epochs 120 "
       "--threads=1 --eval-every 5 --out training_state/long120/resnet20_pqa --no-progress\n"
       "resumed from training_state/long120/resnet20_pqa/checkpoint.pt at epoch 55\n")


def test_keeps_the_last_configuration_and_replaces_what_depends_on_the_machine(tmp_path):
    (tmp_path / "train.log").write_text(LOG)
    argv = module.resume_argv(str(tmp_path), "/tmp/cifar10", 4)
    assert argv == ["pmsm-train", "--model", "resnet20", "--act", "pqa", "--epochs", "120", "--eval-every", "5",
                    "--no-progress", "--data", "/tmp/cifar10", "--threads", "4", "--out", str(tmp_path)]


def test_refuses_a_folder_without_a_pmsm_train_command(tmp_path, capsys):
    with pytest.raises(ValueError, match="no train.log with a 'command:' line"):
        module.resume_argv(str(tmp_path), "/d", 1)
    (tmp_path / "train.log").write_text("{\"epoch\": 1}\n")
    with pytest.raises(ValueError, match="no train.log with a 'command:' line"):
        module.resume_argv(str(tmp_path), "/d", 1)
    (tmp_path / "train.log").write_text("command: rm -rf /\n")
    assert module.main([str(tmp_path), "--data", "/d"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
