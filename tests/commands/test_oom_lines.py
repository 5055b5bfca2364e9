"""A GPU that runs out of memory (torch.OutOfMemoryError, emulated on the CPU by raising it from a patched step):
one line naming where, the allocation, the keys or options that lower the memory and how to go on, exit status 2,
no traceback (docs/reliability.md). A CPU MemoryError keeps its own line."""

from __future__ import annotations

import pytest
import torch

from dynametric.cli import main
from dynametric.engine.module import MetricLearningModule
from tests.commands.test_train_interrupt import _config, _metrics, _process_state  # noqa: F401

CUDA_TEXT = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.11 GiB of which "
             "1.2 GiB is free. Process 4242 has 77.90 GiB memory in use.")
DETAIL = "tried to allocate 2.00 GiB; GPU 0: 1.2 GiB free of 79.11 GiB"


def _oom_in_training(monkeypatch, when, error=None) -> dict:
    """training_step raises a GPU's out-of-memory error at the first step where ``when(trainer)`` holds; the step
    it raised at is returned in ``seen['step']``."""
    real = MetricLearningModule.training_step
    seen: dict = {}

    def training_step(self, batch, batch_idx):
        if "step" not in seen and when(self.trainer):
            seen["step"] = self.trainer.global_step
            raise error if error is not None else torch.OutOfMemoryError(CUDA_TEXT)
        return real(self, batch, batch_idx)

    monkeypatch.setattr(MetricLearningModule, "training_step", training_step)
    return seen


def test_out_of_gpu_memory_in_a_training_step_is_one_line_with_the_resume_command(tmp_path, capsys,
                                                                                   monkeypatch) -> None:
    out = tmp_path / "run"
    seen = _oom_in_training(monkeypatch, lambda t: t.current_epoch == 1)
    assert main(["train", "--config", str(_config(tmp_path)), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip() == (
        f"dynametric train: error: out of GPU memory training at global step {seen['step']} (epoch 1) ({DETAIL}): "
        f"free the GPU's memory (other processes on it) and resume with: dynametric train --resume {out}; or lower "
        "data.batch_size (now 16; trainer.accumulate_grad_batches=K makes a step of K batches, with the loss of each "
        "batch alone), or set trainer.precision=bf16-mixed (now 32) in a new run (a resumed run keeps its config; "
        f"B < 16): dynametric train --config {out / 'config.yaml'} --out NEW data.batch_size=B")
    metrics = _metrics(out)  # as after Ctrl-C: the validation done so far, no test
    assert [v["epoch"] for v in metrics["validation"]] == [0] and metrics["test"] == {} and metrics["untrained"]
    assert not (out / "run_info.json").exists()

    monkeypatch.undo()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0  # the resume it names finishes the run
    assert [v["epoch"] for v in _metrics(out)["validation"]] == [0, 1, 2]


def test_out_of_gpu_memory_before_the_first_checkpoint_says_how_to_start_again(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "run"
    _oom_in_training(monkeypatch, lambda t: t.global_step == 2)
    assert main(["train", "--config", str(_config(tmp_path, epochs=1)), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    start = f"dynametric train --config {out / 'config.yaml'} --out {out} data.batch_size=B"
    assert err.startswith(f"dynametric train: error: out of GPU memory training at global step 2 (epoch 0) ({DETAIL}): "
                          "no checkpoint yet; lower data.batch_size (now 16; ")
    assert err.endswith(f"and start again (B < 16): {start}") and "\n" not in err
    assert not (out / "last.ckpt").exists()

    monkeypatch.undo()  # the command it names, with a smaller batch, starts the run again in the same folder
    assert main(start.replace("B", "8").split()[1:] + ["--no-progress"]) == 0
    assert "batch_size: 8" in (out / "config.yaml").read_text()


def test_out_of_gpu_memory_while_validating_names_the_evaluation_keys(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "run"
    real = MetricLearningModule.validation_step

    def validation_step(self, batch, batch_idx):
        if self.trainer.current_epoch == 1:
            raise torch.OutOfMemoryError(CUDA_TEXT)
        return real(self, batch, batch_idx)

    monkeypatch.setattr(MetricLearningModule, "validation_step", validation_step)
    cfg = _config(tmp_path)
    bf16 = "trainer.precision=bf16-mixed"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress", bf16]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"dynametric train: error: out of GPU memory validating in epoch 1 ({DETAIL}): free the "
                          f"GPU's memory (other processes on it) and resume with: dynametric train --resume {out}; or "
                          "lower data.eval_batch_size (now 64) or eval.memory_budget_bytes (the ranking's working "
                          "memory) in a new run (a resumed run keeps its config; B < 64): ")
    assert err.endswith("--out NEW data.eval_batch_size=B") and "precision" not in err  # bf16 already
    assert [v["epoch"] for v in _metrics(out)["validation"]] == [0]


def test_out_of_gpu_memory_in_a_python_run_says_the_python_calls(tmp_path, monkeypatch) -> None:
    from dynametric.config import load_config
    from dynametric.errors import DynametricError
    from dynametric.pipeline.run import run_training

    out = tmp_path / "run"
    _oom_in_training(monkeypatch, lambda t: t.current_epoch == 1)
    with pytest.raises(DynametricError) as caught:
        run_training(load_config(_config(tmp_path)), out, progress=False)
    assert isinstance(caught.value, torch.OutOfMemoryError)  # a caller catching torch's error still catches it
    message = str(caught.value)
    assert f"resume with: run_training(load_config({str(out / 'config.yaml')!r}), {str(out)!r}, resume=True)" \
        in message
    assert message.endswith(f"run_training(load_config({str(out / 'config.yaml')!r}, ['data.batch_size=B']), NEW)")
    assert "dynametric train" not in message


def test_a_cpu_memory_error_in_training_keeps_its_own_line(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "run"
    _oom_in_training(monkeypatch, lambda t: t.global_step == 1, MemoryError())
    assert main(["train", "--config", str(_config(tmp_path, epochs=1)), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dynametric train: error: out of memory") and err.endswith(
        "; lower eval.memory_budget_bytes (the evaluation's working memory) or free memory")
    assert "GPU" not in err and "Traceback" not in err


def _raise_oom(*args, **kwargs):
    raise torch.OutOfMemoryError(CUDA_TEXT)


def test_out_of_gpu_memory_in_embed_names_its_batch_size(tiny_ckpt, tiny_images, tmp_path, capsys,
                                                         monkeypatch) -> None:
    import dynametric.retrieval.model as retrieval_model

    monkeypatch.setattr(retrieval_model, "embed_batch", _raise_oom)
    assert main(["embed", "--checkpoint", str(tiny_ckpt), "--images", str(tiny_images / "imgs"), "--out",
                 str(tmp_path / "emb"), "--batch-size", "4", "--workers", "0", "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"dynametric embed: error: out of GPU memory ({DETAIL}); lower --batch-size (images per forward pass) or "
        "free the GPU's memory (other processes on it)")


def test_out_of_gpu_memory_in_evaluate_checkpoint_names_its_batch_size_and_budget(tiny_ckpt, capsys,
                                                                                   monkeypatch) -> None:
    import dynametric.engine.inference as inference

    monkeypatch.setattr(inference, "embed_batch", _raise_oom)
    assert main(["evaluate", "--checkpoint", str(tiny_ckpt), "--split", "test", "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"dynametric evaluate: error: out of GPU memory ({DETAIL}); lower --batch-size (images per forward pass, "
        "with --checkpoint) or --memory-budget-mb (the ranking's working memory) or free the GPU's memory (other "
        "processes on it)")


@pytest.mark.parametrize(("exc", "detail"), [
    # torch 2.1 spelled "capacty"; the older form lists the allocated memory between the total and the free
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 512.00 MiB. GPU 1 has a total capacty of 23.69 "
                            "GiB of which 100.06 MiB is free."), "tried to allocate 512.00 MiB; GPU 1: 100.06 MiB "
                                                                 "free of 23.69 GiB"),
    (RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 7.79 GiB total capacity; 6.49 GiB already "
                  "allocated; 17.56 MiB free; 6.60 GiB reserved in total by PyTorch)"),
     "tried to allocate 20.00 MiB; GPU 0: 17.56 MiB free of 7.79 GiB"),
    (RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"), ""),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), ""),
    (getattr(torch, "AcceleratorError", RuntimeError)("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), ""),
    (RuntimeError("HIP error: out of memory"), ""),
    (RuntimeError("CUDA driver error: out of memory"), ""),
])
def test_every_form_of_a_gpus_out_of_memory_is_one_line(exc, detail) -> None:
    """QA: a kernel's 'CUDA error: out of memory' and cuBLAS's allocation failure were tracebacks; torch 2.1's
    'capacty' lost the free memory."""
    from dynametric.utils.limits import gpu_memory_detail, gpu_out_of_memory, out_of_memory, resource_error_line

    assert gpu_out_of_memory(exc) and out_of_memory(exc) and gpu_memory_detail(exc) == detail
    assert resource_error_line(exc, "embed") == (
        f"out of GPU memory{f' ({detail})' if detail else ''}; lower --batch-size (images per forward pass) or free "
        "the GPU's memory (other processes on it)")
    assert not gpu_out_of_memory(RuntimeError("CUDA error: device-side assert triggered"))
    assert not gpu_out_of_memory(MemoryError("Unable to allocate 3.0 GiB"))
