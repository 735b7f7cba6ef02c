"""A job's TensorBoard event files (foldK/seedS/tb/, docs/runs.md)."""
import dataclasses
from contextlib import contextmanager

from figures import draw_confusion, pyplot
from files import writing
from settings import RUN_ONLY, UserError


def summary_writer():
    """torch.utils.tensorboard.SummaryWriter, imported when first needed: it imports tensorboard, slow.
    Without tensorboard installed, one line that says what to do."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise UserError(f"TensorBoard event files need the tensorboard package ({e}): "
                        "pip install -r requirements.txt, or pass --no-tensorboard") from None
    return SummaryWriter


class Board:
    """The job's TensorBoard event files in `folder` (foldK/seedS/tb/, docs/runs.md). Per step: L,
    L_r, L_c (Eq. 4-6) and the learning rate; per epoch, at its last step: the mean loss, the
    validation WA and UA, seconds and audio-s/s; after the last step: the test WA and UA, the
    confusion matrix and the job's settings (TensorBoard's HParams view). Step k of epoch e is
    global step (e - 1) * steps + k, so a resumed job continues its curves: the writer opens at the
    first step it writes and purges what a killed process wrote from there on. Only rank 0 writes;
    with --no-tensorboard nothing is written, nor tensorboard imported."""

    def __init__(self, folder, cfg, rt, steps):
        self.folder, self.cfg, self.rt, self.steps = folder, cfg, rt, steps  # steps: per epoch
        self.on, self.writer = rt.rank == 0 and not cfg.no_tensorboard, None

    @contextmanager
    def _writing(self, step, purge=True):
        """The writer, opened at the first step written: it purges what a killed process wrote from
        there on (purge). A disk or quota that fills meanwhile ends the run in one line (DiskFull)."""
        with writing(self.folder):
            if self.writer is None:
                self.writer = summary_writer()(self.folder, purge_step=step if purge else None)
            yield self.writer

    def step(self, epoch, k, losses, lr):
        """Step k of the epoch: its [L, L_r, L_c] (train_step) and learning rate."""
        if self.on:
            step = (epoch - 1) * self.steps + k
            with self._writing(step) as w:
                for tag, value in zip(("train/loss", "train/L_r", "train/L_c", "train/lr"), [*losses, lr]):
                    w.add_scalar(tag, value, step)

    def epoch(self, row):
        """The history's line of an epoch (Epoch.row), at its last step, flushed to disk."""
        if self.on:
            step = row["epoch"] * self.steps
            with self._writing(step) as w:
                for tag, key in [("train/epoch_loss", "loss"), ("val/WA", "val_wa"), ("val/UA", "val_ua"),
                                 ("time/epoch_seconds", "seconds"), ("time/audio_s_per_s", "audio_per_s")]:
                    if row[key] is not None:  # no validation part (Sec. 3.3): no validation scores
                        w.add_scalar(tag, row[key], step)
                w.flush()

    def end(self, test, classes, job, epochs, targets=None):
        """The test of the job, trained for `epochs` epochs, after its last step: the scores, the
        confusion matrix and, beside the scores, the settings that decide what the job computes;
        targets: its scores on the test sets of other corpora (crosscorpus.score_job), as cross/NAME/*."""
        if not self.on:
            return
        step = epochs * self.steps + 1
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(4.5, 4), layout="constrained")
        draw_confusion(ax, test["confusion"], classes, f"fold {job.fold} seed {job.seed}: test")
        settings = {k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in RUN_ONLY}
        settings.update(fold=job.fold, seed=job.seed, precision=self.rt.precision)
        scores = {"test/WA": test["wa"], "test/UA": test["ua"], **cross_scalars(targets or {})}
        from torch.utils.tensorboard.summary import hparams  # loaded with the writer
        _, start, end = hparams(settings, scores)  # without the experiment summary (add_hparams writes one), TensorBoard
        with self._writing(step) as w:  # builds it from every job's settings, those that differ between jobs first
            w.add_figure("test/confusion", fig, step)  # closes the figure
            for tag, value in scores.items():
                w.add_scalar(tag, value, step)
            for summary in (start, end):
                w.file_writer.add_summary(summary, step)
            w.close()

    def targets(self, found, epochs):
        """Scores on test sets of other corpora added to a finished job (crosscorpus.score_finished), one step
        after its test, the steps before it kept."""
        if self.on:
            step = epochs * self.steps + 2
            with self._writing(step, purge=False) as w:
                for tag, value in cross_scalars(found).items():
                    w.add_scalar(tag, value, step)
                w.close()


def cross_scalars(targets):
    """{cross/NAME/WA|UA|F1: value} of a job's scores on other corpora."""
    return {f"cross/{name}/{metric.upper() if metric != 'f1' else 'F1'}": s[metric]
            for name, s in targets.items() for metric in ("wa", "ua", "f1")}
