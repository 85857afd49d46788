"""benchmarks/gpu_check.py's logic on CPU at toy scale (``--device cpu --tiny``), so the GPU
check cannot rot in a suite that never has a GPU: every part runs without an error entry and
reports its figures; on the CPU a run resumed after a SIGTERM (pool, torchrun) gives the
uninterrupted run's records and weights exactly, and a stage computed twice is identical."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def test_gpu_check_runs_on_cpu_at_tiny_scale(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    errors = {k: v.get("error") for k, v in results.items() if k != "info" and "error" in v}
    assert not errors, errors
    for name in ("pretrain_simclr", "pretrain_pricon", "pretrain_simclr_512", "pretrain_pricon_512_r7",
                 "pretrain_pricon_512_r56"):
        r = results[name]
        assert r["steps_per_s"] > 0 and r["bare_steps_per_s"] > 0 and r["ratio"] > 0
        assert 0 <= r["data_wait_fraction"] < 1
    assert results["finetune"]["ratio"] > 0
    assert len(results["amp_agreement"]["fp32"]) == 20
    # on CPU autocast is off: both runs are the same fp32 computation
    assert results["amp_agreement"]["max_rel_diff"] < 1e-4
    assert results["ddp"]["grads_equal"] and results["ddp"]["all_reduce"] == [1.0] * 4
    info = results["info"]
    assert info["shm_free_gib"] >= 0 and info["cpus"] >= 1 and info["cudnn_benchmark"] is False
    syncs = results["host_syncs"]["per_step"]
    assert syncs["finetune"] == syncs["simclr"] == syncs["simsiam"] == 0 and "pricon" in syncs
    assert results["eval_precision"]["argmax_disagreement"] == 0.0  # no AMP on CPU
    assert results["fp16"]["finite"] and results["fp16"]["max_rel_diff"] == 0.0
    assert results["resume"] == {**results["resume"], "equal_across_workers": True,
                                 "other_epoch_differs": True}
    fm = results["foundation_model"]
    assert all(fm[p]["steps_per_s"] > 0 and fm[p]["loss_finite"] for p in ("frozen", "lora", "full"))
    assert fm["lora"]["trainable_params_m"] < fm["full"]["trainable_params_m"]
    for name in ("e2e_pool", "e2e_torchrun"):
        r = results[name]
        assert r["signalled"] and r["checkpoint_on_sigterm"] and r["resumed_rc"] == 0, r
        assert r["records"] == 1 and r["records_equal"] and r["weights_max_abs_diff"] == 0.0, r
    assert results["e2e_pool"]["interrupted_rc"] == 130 and results["e2e_torchrun"]["backend"] == "gloo"
    noise = results["stage_noise"]
    assert noise["weights_max_abs_diff"] == noise["max_loss_diff"] == 0.0 and noise["epochs"] == 3
