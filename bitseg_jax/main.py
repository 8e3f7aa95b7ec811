r"""Entry point: `python -m bitseg_jax.main --config=... --workdir=... [--mode=train|eval|export]`.

# Train (resumes automatically if the workdir holds a checkpoint):
python -m bitseg_jax.main --config=configs/quickstart.py --workdir=workdirs/quickstart
# Evaluate a named setup (evaluation.SETUPS) on the latest checkpoint; the config defaults to
# the workdir's config.json:
python -m bitseg_jax.main --mode=eval --workdir=workdirs/quickstart --eval_setup=vali
# ... on another data set or scoring size: pass --config with overrides and an --eval_tag, so
# the results go to eval/<setup>_<tag>.json instead of overwriting eval/<setup>.json.
# Export weights (.npz + config JSON) and the jax.export'ed sampler:
python -m bitseg_jax.main --mode=export --workdir=workdirs/quickstart --out=exported/
# Multi-host (Cloud TPU pods, GPU clusters; see launch/): add --multihost on every host.
# On CPU, several local processes (launch/local_multiprocess.sh) also pass
# --coordinator_address, --num_processes and --process_id.
"""

import logging as py_logging
import os

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
MODES = ("train", "eval", "export")

config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py[:variant]); eval/export default to the workdir's."
)
flags.DEFINE_string("workdir", None, "Output folder (local or gs://).", required=True)
flags.DEFINE_enum("mode", "train", MODES, "What to do.")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (multi-process runs).")
flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (--multihost; auto-detected on TPU)."
)
flags.DEFINE_integer("num_processes", None, "Number of processes (--multihost; else auto).")
flags.DEFINE_integer("process_id", None, "This process's index (--multihost; else auto).")
flags.DEFINE_string("eval_setup", "vali", "--mode=eval: a named setup of evaluation.SETUPS.")
flags.DEFINE_enum("eval_which", "latest", ("latest", "best"), "--mode=eval: which checkpoint.")
flags.DEFINE_string(
    "eval_tag",
    "",
    "--mode=eval: suffix of the result files (eval/<setup>_<tag>.json), e.g. the data set name "
    "when evaluating on another one.",
)
flags.DEFINE_string("out", None, "--mode=export: output folder (default: <workdir>/export).")


class DataNotFoundError(SystemExit):
    """A data set is missing: stops main at once with a message saying how to prepare it."""


def check_data(config) -> None:
    """Stops early (before any model is built) when a data set of the config cannot be read.

    Prepared data sets pass. Unprepared ones are prepared here on a single process: locally
    generated ones (dead_leaves) always, manual-download ones (bsds500, dsb2018, entityseg) when
    their files are in `config.data.manual_dir`. Anything else raises `DataNotFoundError` naming
    the data set, where it was looked for and how to prepare it.
    """
    import jax
    import tensorflow_datasets as tfds

    import bitseg_jax.datasets  # noqa: F401  (registers our TFDS builders)

    data_dir = config.data.data_dir or None
    for name in config.data.datasets:
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except (tfds.core.registered.DatasetNotFoundError, ValueError) as e:
            first_line = str(e).strip().splitlines()[0]
            raise DataNotFoundError(
                f"Unknown data set {name!r} in config.data.datasets ({first_line}); ours are "
                "the builders in bitseg_jax/datasets/ (e.g. dead_leaves, bsds500, dsb2018)."
            ) from e
        if builder.is_prepared():
            continue
        where = builder.data_dir
        needs_manual = bool(getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None))
        manual_dir = config.data.manual_dir or os.path.join(
            data_dir or os.path.expanduser("~/tensorflow_datasets"), "downloads", "manual"
        )
        how = (
            f"put the publisher's files in {manual_dir} (set --config.data.manual_dir) and rerun, "
            f"or run `tfds build bitseg_jax/datasets --datasets={name} --manual_dir=DIR"
            f"{f' --data_dir={data_dir}' if data_dir else ''}` once."
            if needs_manual
            else f"run `tfds build bitseg_jax/datasets --datasets={name}` once."
        )
        if jax.process_count() > 1:
            raise DataNotFoundError(
                f"Data set {name!r} is not prepared in {where}; a multi-host run cannot prepare "
                f"it. To prepare it: {how}"
            )
        if needs_manual and not os.path.isdir(manual_dir):
            raise DataNotFoundError(
                f"Data set {name!r} is not prepared in {where} and its manual-download folder "
                f"{manual_dir} does not exist. To prepare it: {how}"
            )
        logging.info("Preparing data set %s in %s (manual_dir %s).", name, where, manual_dir)
        try:
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(
                    manual_dir=manual_dir if needs_manual else None
                )
            )
        except Exception as e:  # any failure: say how to prepare (the cause stays chained)
            raise DataNotFoundError(
                f"Preparing data set {name!r} in {where} from {manual_dir} failed ({e}). "
                f"To prepare it: {how}"
            ) from e


class QuietOrbaxFilter(py_logging.Filter):
    """Drops orbax's INFO chatter (several long lines per checkpoint); its warnings stay."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        return record.levelno >= py_logging.WARNING or "orbax" not in record.pathname


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(QuietOrbaxFilter())
    # TF is only used by tf.data: keep it off the accelerators JAX owns.
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    import jax

    if FLAGS.multihost:
        # Never unconditional: initialize() raises on a plain single-process CPU run.
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    logging.info(
        "JAX process %d of %d; %d local / %d global devices (%s).",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices()[0].platform,
    )

    from bitseg_jax import checkpointing

    config = FLAGS.config
    if config is None:
        if FLAGS.mode == "train" and not os.path.exists(
            os.path.join(FLAGS.workdir, checkpointing.CONFIG_FILE)
        ):
            raise app.UsageError("--config is required to start a training run.")
        config = checkpointing.load_config(FLAGS.workdir)
    run(
        config,
        FLAGS.workdir,
        mode=FLAGS.mode,
        eval_setup=FLAGS.eval_setup,
        eval_which=FLAGS.eval_which,
        eval_tag=FLAGS.eval_tag,
        out=FLAGS.out,
    )


def run(
    config,
    workdir: str,
    *,
    mode: str = "train",
    eval_setup: str = "vali",
    eval_which: str = "latest",
    eval_tag: str = "",
    out: str | None = None,
) -> None:
    """Dispatches one mode (the flags' meaning; callable without absl, e.g. from tests).

    Raises:
      KeyError: unknown `mode`.
      DataNotFoundError: a data set of the config is missing (train and eval).
    """
    if mode not in MODES:
        raise KeyError(f"Unknown mode {mode!r}; expected one of {MODES}.")
    if mode == "train":
        check_data(config)
        from bitseg_jax import train

        train.train_and_evaluate(config, workdir)
    elif mode == "eval":
        check_data(config)
        from bitseg_jax import evaluation

        evaluation.run_eval(config, workdir, setup=eval_setup, which=eval_which, tag=eval_tag)
    else:
        from bitseg_jax import export

        export.export(config, workdir, out or os.path.join(workdir, "export"))


if __name__ == "__main__":
    app.run(main)
