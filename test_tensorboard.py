"""TensorBoard event files of a job (board.Board), read back with TensorBoard's own reader. The curves of
a whole job and of one killed after epoch 1 and resumed are checked in test_smoke.py, the single writer
under torchrun in test_runs.py, and that --no-tensorboard changes no number in test_runs.py."""
import errno

import pytest
import torch
from tensorboard.plugins.hparams import plugin_data_pb2

from board import Board
from conftest import board, curves
from runs import Job
from settings import Config, DiskFull
from runtime import Runtime

STEPS = 3  # per epoch
TEST = dict(wa=0.75, ua=0.5, confusion=[[3, 1], [0, 0]])


def row(epoch, loss):
    return dict(epoch=epoch, loss=loss, l_r=loss, l_c=0.0, lr=1e-4, val_wa=0.5, val_ua=0.25, seconds=1.0, audio_per_s=9.0)


def test_a_resumed_job_overwrites_the_steps_its_killed_process_wrote_after_the_last_finished_epoch(tmp_path):
    cfg, rt, tb = Config(demo=True), Runtime(torch.device("cpu"), "fp32"), tmp_path / "tb"
    killed = Board(tb, cfg, rt, STEPS)
    for k in range(1, STEPS + 1):
        killed.step(1, k, [1.0, 1.0, 0.0], 1e-4)
    killed.epoch(row(1, 1.0))
    assert [s for s, _ in curves(tb)["train/loss"]] == [1, 2, 3]  # on disk before fit saves the state of epoch 1
    killed.step(2, 1, [9.0, 9.0, 0.0], 8e-5)
    killed.step(2, 2, [9.0, 9.0, 0.0], 8e-5)
    killed.writer.flush()  # on disk, as the writer's periodic flush leaves them; then the process is killed
    assert [s for s, _ in curves(tb)["train/loss"]] == [1, 2, 3, 4, 5]

    resumed = Board(tb, cfg, rt, STEPS)  # resumed after epoch 1
    for k in range(1, STEPS + 1):
        resumed.step(2, k, [2.0, 2.0, 0.0], 8e-5)
    resumed.epoch(row(2, 2.0))
    resumed.end(TEST, ["a", "b"], Job("2", 0), 2)
    lines = curves(tb)
    assert lines["train/loss"] == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 2.0), (5, 2.0), (6, 2.0)]
    assert [s for s, _ in lines["train/lr"]] == [1, 2, 3, 4, 5, 6]
    assert lines["train/epoch_loss"] == [(3, 1.0), (6, 2.0)] and [s for s, _ in lines["val/WA"]] == [3, 6]
    assert lines["test/WA"] == [(7, 0.75)] and lines["test/UA"] == [(7, 0.5)]

    again = Board(tb, cfg, rt, STEPS)  # killed during its test, after writing it: resumed, tested again
    again.end(TEST, ["a", "b"], Job("2", 0), 2)
    events = board(tb)
    assert [e.step for e in events.Scalars("test/WA")] == [7] and [e.step for e in events.Images("test/confusion")] == [7]
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    hparams = events.PluginTagToContent("hparams")
    assert "_hparams_/experiment" not in hparams  # TensorBoard builds it from all jobs: the settings that differ first
    start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["fold"].string_value == "2" and start.hparams["seed"].number_value == 0
    assert start.hparams["mixup"].string_value == "adaptive" and start.hparams["precision"].string_value == "fp32"
    assert "out" not in start.hparams and "workers" not in start.hparams  # where it ran is not what it computed


@pytest.mark.parametrize("why", ["rank 1", "--no-tensorboard"])
def test_a_board_of_another_rank_or_with_no_tensorboard_writes_nothing(tmp_path, why):
    cfg = Config(no_tensorboard=why == "--no-tensorboard")
    quiet = Board(tmp_path / "tb", cfg, Runtime(torch.device("cpu"), "fp32", rank=int(why == "rank 1"), size=2),
                        STEPS)
    quiet.step(1, 1, [1.0, 1.0, 0.0], 1e-4)
    quiet.epoch(row(1, 1.0))
    quiet.end(TEST, ["a", "b"], Job("2", 0), 1)
    assert not (tmp_path / "tb").exists()


def test_a_disk_that_fills_while_the_board_writes_is_one_line(tmp_path, monkeypatch):
    full = Board(tmp_path / "tb", Config(), Runtime(torch.device("cpu"), "fp32"), STEPS)
    full.step(1, 1, [1.0, 1.0, 0.0], 1e-4)

    def no_space(*args, **kwargs):  # what the event writer raises once the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(full.writer, "add_scalar", no_space)
    with pytest.raises(DiskFull, match=f"cannot write {tmp_path / 'tb'}: no space left on device"):
        full.step(1, 2, [1.0, 1.0, 0.0], 1e-4)
