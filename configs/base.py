r"""Paper defaults (SPEC section 0): the `analog_bits` model on EntitySeg at 128 px.

Command (Cloud TPU or one GPU; EntitySeg prepared with TFDS, see README "Data"):

  python -m bitseg_jax.main --config=configs/base.py --workdir=$WORKDIR

Variants (`--config=configs/base.py:VARIANT`):
  tiny   test size: 32 px, 8 channels, 1 res block, a few steps on dead_leaves (CPU, seconds).
  small  the benchmark "small" model: 64 px, 32 channels, mult (1, 2, 3, 4), 7,274,374 params.
  onehot SPEC 10 `onehot`: one-hot encoding (2**num_bits channels), final act none, LAP random.
  unigs  SPEC 10 `unigs`: RGB colour-map encoding (UniGS), final act none, LAP random.

Hardware and runtime: the paper trained 300k steps at batch 8 on one GPU. The expected result
(SPEC section 11) is ARI 0.670 / IoU 0.432 on the EntitySeg validation split with 8 DDPM steps
and guidance weight 1.0.

Every field is documented where it is set. Values are those of SPEC section 0 unless a comment
says otherwise.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the complete default config; `arg` selects a named variant."""
    config = ml_collections.ConfigDict()
    config.seed = 0  # run seed: data order, LAP `random` grid, init, noise.
    config.total_steps = 300_000
    config.batch_size = 8  # global batch, split over all devices of all hosts.
    config.log_every_steps = 50  # train/loss, train/grad_norm, train/lr, ... scalars.
    config.vali_loss_every_steps = 1000  # SPEC 9.3: validation-loss batches.
    config.num_vali_batches = 8
    config.eval_every_steps = 5000  # SPEC 9.3: the `64x3[vali]` / `64x3[train]` sampling eval.
    config.ckpt_every_steps = 5000
    config.max_ckpts_to_keep = 1  # regular checkpoints kept (the best one is kept separately).
    config.init_from = ""  # a workdir or exported .npz to initialise params from (not resumed).

    # --- Model: attention U-Net of SPEC section 6. -------------------------------------------
    config.model = m = ml_collections.ConfigDict()
    m.image_size = 128
    m.num_channels = 64  # base channels M.
    # "auto" (SPEC 6.4 table) or a tuple such as (1, 2, 2, 4, 4); typed `object` so that
    # `--config.model.channel_multiplier="(1, 2, 3, 4)"` can replace "auto".
    m.channel_multiplier = ml_collections.FieldReference("auto", field_type=object)
    m.deeper_net = False  # the `deeper_net` column of the auto table.
    m.num_res_blocks = 3  # per level in the encoder; the decoder uses num_res_blocks + 1.
    m.num_middle_res_blocks = 2
    m.attention_levels = (-2, -1)  # levels with attention; negative counts from the end.
    m.num_heads = 4
    m.dropout = 0.0
    m.use_scale_shift_norm = False
    m.encoding = "analog_bits"  # "analog_bits" | "onehot" | "rgb" (SPEC section 3).
    m.num_bits = 6  # k: 2**k classes (analog bits, one-hot).
    m.rgb_offset = True  # RGB only: reproduce the reference's (2I-1)/255 offset (SPEC B3).
    # Applied after the head. SPEC's `tanh_if_x` is spelled out here: "tanh" for x-prediction;
    # the sweeps that change `diffusion.predict` set this field too.
    m.final_activation = "tanh"  # "tanh" | "sigmoid" | "softmax" | "none".
    m.dtype = "float32"  # compute dtype; "bfloat16" on accelerators. Params are always float32.

    # --- Diffusion: SPEC sections 5 and 7. ----------------------------------------------------
    config.diffusion = d = ml_collections.ConfigDict()
    d.schedule = "cosine"  # "cosine" | "linear" | "linear_simple".
    d.input_scale = 0.1  # b; 1.0 disables input scaling.
    d.logsnr_min = -20.0
    d.logsnr_max = 20.0
    d.predict = "x"  # "x" | "eps" | "v".
    d.weighting = "sigmoid_-4"  # "sigmoid_<bias>" | "SNR" | "SNR_plus1" | "SNR_trunc" | "uniform".
    d.decoupled = True  # multiply the weight by -dlogsnr/dt (SPEC 5.5).
    d.t_sampler = "uniform_low_d"  # "uniform_low_d" | "uniform" | "low_discrepancy".
    d.p_image = 0.95  # CFG: probability that a training sample keeps its image.

    # --- Data: SPEC section 2. ----------------------------------------------------------------
    config.data = data = ml_collections.ConfigDict()
    data.datasets = ("entityseg",)  # TFDS builder names; several are mixed by `weights`.
    data.weights = (1.0,)
    data.data_dir = ""  # TFDS data dir ("" = TFDS default, e.g. ~/tensorflow_datasets or gs://).
    data.manual_dir = ""  # manual-download folder for builders that need one ("" = TFDS default).
    data.train_split = "train"
    data.eval_split = "validation"
    data.lap_mode = "similar"  # "similar" | "different" | "random" | "range" | "none".
    data.shuffle_zero = True  # no-LAP relabelling keeps the smallest id at class 0 (SPEC B7).
    data.mask_padding = False  # False: padding joins segment 0 (reference, SPEC B1); True: -1.
    data.augment = True  # SPEC 2.3 augmentations on the train split.
    data.aug_prob_multiplier = 1.0
    data.shuffle_buffer = 10_000

    # --- Optimiser: SPEC 9.1-9.2. -------------------------------------------------------------
    config.optim = o = ml_collections.ConfigDict()
    o.lr = 1e-4
    o.b1 = 0.9
    o.b2 = 0.999
    o.eps = 1e-8
    o.weight_decay = 0.0
    o.warmup_steps = 1000
    o.warmup_type = "linear"  # "linear" | "cosine".
    o.decay_steps = 50_000  # decay over the last `decay_steps` steps.
    o.decay_type = "cosine"  # "cosine" | "linear".
    o.grad_clip = 1.0  # global L2 norm.
    o.ema_rate = 0.9999

    # --- Evaluation: SPEC 7.5 and 8. ----------------------------------------------------------
    config.eval = e = ml_collections.ConfigDict()
    e.num_steps = 8
    e.guidance_weight = 1.0
    e.sampler = "ddpm"  # "ddpm" | "ddim".
    e.var_type = "large"  # DDPM variance: "large" | "small".
    e.clip_denoised = True
    e.use_ema = False  # SPEC 9.5: the paper's numbers come from the raw weights.
    e.batch_size = 8
    e.num_images = 64  # images per periodic evaluation (`64x3`).
    e.num_samples = 3  # samples per image (votes).
    e.max_images = 0  # cap on the images of every `run_eval` setup (0 = the setup's own).
    # Scoring size E: annotations are resized to E (as SPEC 2.3 does to S) and the samples
    # nearest-upsampled to it (0 = model.image_size, the reference's protocol).
    e.image_size = 0
    e.best_metric = "max_ari"  # metric of the first periodic eval split that picks "best".

    if arg:
        _apply_variant(config, arg)
    config.lock()  # a typo such as --config.optim.lrr=1 fails loudly.
    return config


def _apply_variant(config: ml_collections.ConfigDict, arg: str) -> None:
    """Applies the named variant in place (see module docstring)."""
    if arg == "tiny":
        config.total_steps = 4
        config.batch_size = 8
        config.log_every_steps = 2
        config.vali_loss_every_steps = 2
        config.num_vali_batches = 1
        config.eval_every_steps = 4
        config.ckpt_every_steps = 2
        config.model.image_size = 32
        config.model.num_channels = 8
        config.model.channel_multiplier = (1, 2)
        config.model.num_res_blocks = 1
        config.model.num_middle_res_blocks = 2
        config.model.num_heads = 2
        config.data.datasets = ("dead_leaves/tiny",)  # 64 + 16 images of 32 px
        config.data.shuffle_buffer = 64
        config.optim.warmup_steps = 2
        config.optim.decay_steps = 2
        config.eval.num_steps = 2
        config.eval.batch_size = 8
        config.eval.num_images = 8
        config.eval.num_samples = 2
    elif arg == "small":
        config.model.image_size = 64
        config.model.num_channels = 32
        config.model.channel_multiplier = (1, 2, 3, 4)
    elif arg == "onehot":
        # SPEC 10 `onehot`: 2**num_bits one-hot channels, no final activation, LAP random.
        config.model.encoding = "onehot"
        config.model.final_activation = "none"
        config.data.lap_mode = "random"
    elif arg == "unigs":
        # SPEC 10 `unigs`: the RGB colour map of UniGS (121 classes with LAP), no activation.
        config.model.encoding = "rgb"
        config.model.final_activation = "none"
        config.data.lap_mode = "random"
    else:
        raise ValueError(f"Unknown config variant {arg!r}; expected one of {', '.join(VARIANTS)}.")


VARIANTS = ("tiny", "small", "onehot", "unigs")
