"""The base config every recipe starts from: the ImageNet-1K recipe of the paper.

FOUND (the paper): 300 epochs, global batch 1024, lr 1e-3, cosine decay.
INFERRED (our reconstruction, from the PoolFormer/VAN recipe the paper reuses): all the
rest. Each INFERRED value is a field here so it can be changed from the command line:

    python train.py --config configs/dmformer_s.py --config.optim.weight_decay=0.02
"""

from __future__ import annotations

import ml_collections

from dmformer_jax.recipe import IMAGENET_MEAN, IMAGENET_STD


def _unset(field_type: type) -> ml_collections.FieldReference:
    """A typed field whose None means 'not overridden' (settable from the command line)."""
    return ml_collections.FieldReference(None, field_type=field_type)


def get_base_config() -> ml_collections.ConfigDict:
    """The ImageNet-1K recipe with every field the trainer reads."""
    config = ml_collections.ConfigDict()
    config.seed = 0

    # --- model -------------------------------------------------------------
    config.model = ml_collections.ConfigDict()
    config.model.name = "dmformer_s"
    # Every field create_model accepts (dmformer_jax.models.DMFormer), so
    # --config.model.<field>=... reaches each one; they are validated in one place
    # (dmformer_jax.models.registry.create_model). None keeps the variant's value
    # (depths, widths, drop_path_rate, layer_scale_init) or the model's default (the
    # rest; its INFERRED values are noted).
    config.model.depths = _unset(tuple)
    config.model.widths = _unset(tuple)
    config.model.drop_path_rate = _unset(float)
    config.model.layer_scale_init = _unset(float)
    config.model.mlp_ratio = _unset(float)  # 4.0
    config.model.stem_hidden_width = _unset(int)  # min(64, widths[0]), derived in the model
    config.model.expand_ratio = _unset(int)  # 3, INFERRED
    config.model.kernel_sizes = _unset(tuple)  # (3, 5, 7)
    config.model.dilations = _unset(tuple)  # (1, 2, 3)
    config.model.fusion = _unset(str)  # 'split' (INFERRED) | 'sum'
    config.model.gate_reduction = _unset(int)  # 4, INFERRED
    config.model.inner_residual = _unset(bool)  # True, INFERRED
    # Compute dtype: 'auto' (bfloat16 on TPU/GPU, float32 on CPU), 'float32' or 'bfloat16'.
    # Parameters, norms, the DMA gate and the loss stay float32 in every case.
    config.model.dtype = "auto"
    config.model.param_dtype = _unset(str)  # 'float32' | 'bfloat16'; None: float32
    # How convs are computed (never changes parameters or results beyond rounding):
    config.model.depthwise_impl = "auto"  # 'auto' | 'xla' | 'shift_add' | 'shift_add_vjp'
    config.model.conv_impl = "auto"  # 'auto' | 'xla' | 'im2col' | 'im2col_tconv' (stem, downsampling, 1x1)

    # --- data ----------------------------------------------------------------
    config.data = ml_collections.ConfigDict()
    config.data.name = "imagenet2012"  # a TFDS name; 'dmformer_digits' is the offline default
    config.data.data_dir = ml_collections.FieldReference(None, field_type=str)  # local or gs://
    config.data.manual_dir = ml_collections.FieldReference(None, field_type=str)  # ILSVRC tars
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    config.data.image_size = 224
    config.data.eval_image_size = ml_collections.FieldReference(None, field_type=int)  # None: image_size
    config.data.crop_pct = ml_collections.FieldReference(None, field_type=float)  # None: variant's
    config.data.mean = IMAGENET_MEAN
    config.data.std = IMAGENET_STD
    config.data.shuffle_buffer = 16_384
    # How images go to the device: 'auto' (uint8 on TPU/GPU, normalised there: 147 KiB
    # instead of 588 KiB per 224px image; float32 on CPU), 'uint8' or 'float32'.
    config.data.transfer_dtype = "auto"
    # tf.data host options on TPU/GPU hosts (big_vision, Flax ImageNet example): a private
    # thread pool for the input pipeline and single-threaded ops. Ignored on CPU hosts.
    config.data.private_threadpool_size = 48
    config.data.max_intra_op_parallelism = 1
    # Global batches assembled and sent to the devices ahead of the running step.
    config.device_prefetch = 2
    # Independent deterministic input streams (None: one per process). The global batch
    # depends only on this, not on the process count; must divide by process_count.
    config.data.num_shards = ml_collections.FieldReference(None, field_type=int)

    # --- augmentation (INFERRED: timm/PoolFormer defaults) -------------------
    config.augment = ml_collections.ConfigDict()
    config.augment.crop_scale = (0.08, 1.0)
    config.augment.crop_ratio = (3 / 4, 4 / 3)
    config.augment.hflip = True
    config.augment.randaugment = True  # rand-m9-mstd0.5-inc1
    config.augment.randaugment_num_ops = 2
    config.augment.randaugment_magnitude = 9.0
    config.augment.randaugment_magnitude_std = 0.5
    config.augment.color_jitter = 0.4  # ignored while randaugment is on (as in timm)
    config.augment.random_erasing = 0.25
    config.augment.mixup_alpha = 0.8
    config.augment.cutmix_alpha = 1.0
    config.augment.mix_switch_prob = 0.5  # P(cutmix) when both are on
    config.augment.label_smoothing = 0.1

    # --- optimisation (FOUND: epochs, batch, lr, cosine) -----------------------
    config.batch_size = 1024  # global, over all devices of all processes
    config.num_epochs = 300
    config.num_train_steps = ml_collections.FieldReference(None, field_type=int)  # overrides epochs
    config.optim = ml_collections.ConfigDict()
    config.optim.base_lr = 1e-3  # per 1024 images: lr = base_lr * batch_size / 1024
    config.optim.warmup_epochs = 5.0
    config.optim.warmup_init_lr = 1e-6
    config.optim.min_lr = 1e-5
    config.optim.weight_decay = 0.05
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.grad_clip_norm = ml_collections.FieldReference(None, field_type=float)
    config.optim.grad_accum_steps = 1
    config.optim.ema_decay = ml_collections.FieldReference(None, field_type=float)  # e.g. 0.9999
    # lr = base_lr * effective batch / lr_reference_batch (None: base_lr is the lr as is).
    config.optim.lr_reference_batch = ml_collections.FieldReference(1024, field_type=int)
    # 'cosine' (this recipe) | 'poly' (mmcv's poly decay, the segmentation recipes):
    # (peak - min_lr) * (1 - t/T) ** poly_power + min_lr, times mmcv's linear warm-up
    # factor 1 - (1 - t/W) * (1 - warmup_ratio) while t < W (dmformer_jax/train/optim.py).
    config.optim.schedule = "cosine"
    config.optim.poly_power = 1.0
    config.optim.warmup_ratio = 1e-6  # poly only; cosine warms up from warmup_init_lr
    # Warm-up length in optimizer updates; None: warmup_epochs.
    config.optim.warmup_steps = ml_collections.FieldReference(None, field_type=int)
    # Which parameters AdamW decays (dmformer_jax/train/optim.py): 'kernels' (conv/dense
    # kernels: this recipe, timm's), 'all_but_norms' (all but LayerNorm/BatchNorm scales and
    # biases: UperNet, Swin's mmseg config) or 'all' (Semantic FPN, PoolFormer's mmseg config).
    config.optim.weight_decay_params = "kernels"

    # --- checkpoints, eval, logging -----------------------------------------
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 3
    # Reads of one checkpoint step before it counts as unreadable (1 s, 2 s, ... apart):
    # a transient storage error is retried instead of resuming from an older step.
    config.checkpoint_read_attempts = 3
    config.eval_every_steps = 5000
    config.log_every_steps = 50
    # metrics.jsonl / TensorBoard are written by a background thread of process 0; every
    # this many seconds TensorBoard is flushed and, on a gs:// workdir, the new records
    # are uploaded as one new file (metrics.jsonl.parts/), so no write blocks a step.
    config.log_flush_secs = 60.0
    # Every process prints the log lines (prefixed "[process k]"), not only process 0:
    # for debugging a pod (the lines must agree); files are still written by process 0.
    config.log_all_processes = False
    config.eval_batch_size = ml_collections.FieldReference(None, field_type=int)  # None: batch_size
    config.init_from = ml_collections.FieldReference(None, field_type=str)  # checkpoint to fine-tune from
    config.reset_head = False
    # jax.distributed.initialize(): True, False, or "auto" = when JAX detects a cluster
    # (Cloud TPU VM, SLURM, Open MPI) or a cluster field below is set. Needed by every
    # multi-process run (Orbax checkpoints, preemption notice); "auto" is right on pods.
    config.distributed = "auto"
    # Explicit cluster settings for jax.distributed.initialize; None lets JAX detect
    # them (Cloud TPU, SLURM, Open MPI). Set all three for a hand-launched CPU/GPU cluster.
    config.coordinator_address = ml_collections.FieldReference(None, field_type=str)  # "host:port"
    config.num_processes = ml_collections.FieldReference(None, field_type=int)
    config.process_id = ml_collections.FieldReference(None, field_type=int)
    # Seconds a process may go without a heartbeat to the coordination service before
    # every process aborts (SIGABRT); None keeps JAX's default (100 s). Raise it where
    # hosts can stall longer than that (VMs paused or live-migrated, wall-clock steps).
    config.distributed_heartbeat_timeout_s = ml_collections.FieldReference(None, field_type=int)

    # --- task ----------------------------------------------------------------
    # What is trained on the backbone: its model head, loss and metrics
    # (dmformer_jax.tasks.TASKS: 'classification' | 'segmentation', see configs/seg_common.py).
    config.task = "classification"

    # --- run control (added by the trainer) -------------------------------------
    config.eval_at_end = True  # evaluate the final parameters on the whole eval split
    config.async_checkpointing = True  # Orbax writes in a background thread
    # JAX's persistent compilation cache (a local folder, or gs://... shared by every host
    # of a pod): a restarted run loads its compiled train/eval steps instead of
    # recompiling them on every host. None: JAX's own setting (JAX_COMPILATION_CACHE_DIR).
    config.compilation_cache_dir = ml_collections.FieldReference(None, field_type=str)
    # End this run after this step, checkpointing it, as a preemption would (time-boxed
    # jobs, resume tests); the next run on the workdir continues to num_train_steps.
    config.stop_at_step = ml_collections.FieldReference(None, field_type=int)
    return config
