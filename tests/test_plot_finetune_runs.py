"""tools/plot_finetune_runs.py: the evaluation curve's env steps and cumulative wall time."""
import json

import pytest

from tools.plot_finetune_runs import eval_curve, load_history, main, wilson


def _row(it, steps, total_s, success=None, eval_s=0.0, n=50, train=0.25):
    row = {"iteration": it, "env_steps": steps}
    if it > 0:
        row.update(rollout={"success_rate": train}, time={"total_s": total_s})
    if success is not None:
        row["eval"] = {"success_rate": success, "n_episodes": n, "eval_s": eval_s}
    return row


def test_curve_wall_time_and_resumed_rows(tmp_path):
    rows = [_row(0, 0, 0, success=0.5, eval_s=100), _row(1, 1000, 20), _row(2, 2000, 30, success=0.6, eval_s=50),
            _row(3, 3000, 25), _row(3, 3000, 25), _row(4, 4000, 25, success=0.7, eval_s=50)]  # 3 twice: a resume
    (tmp_path / "history.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    c = eval_curve(load_history(tmp_path), "dppo")
    assert c.iterations == [0, 2, 4] and c.env_steps == [0, 2000, 4000]
    assert c.wall_s == [100.0, 200.0, 300.0]  # 100 | +20 +30 +50 | +25 +25 +50
    assert c.success == [0.5, 0.6, 0.7] and c.train_env_steps == [1000, 2000, 3000, 4000]
    out = tmp_path / "cmp.png"
    main([f"{tmp_path}=DPPO", f"{tmp_path / 'history.jsonl'}=again", "--out", str(out)])
    assert out.stat().st_size > 10_000


def test_wilson_and_missing_history(tmp_path):
    lo, hi = wilson(0.5, 50)
    assert lo == pytest.approx(0.3664, abs=1e-4) and hi == pytest.approx(0.6336, abs=1e-4)
    assert wilson(0.0, 20)[0] == 0.0 and wilson(1.0, 20)[1] == 1.0
    with pytest.raises(FileNotFoundError, match="history.jsonl"):
        load_history(tmp_path / "nope")
