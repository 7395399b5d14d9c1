"""Every config key segdep_d2 adds to detectron2's, declared once with its default."""
from detectron2.config import CfgNode as CN
from detectron2.projects.panoptic_deeplab import add_panoptic_deeplab_config


def add_segdep_config(cfg):
    """Add segdep_d2's keys (and detectron2's DeepLab / Panoptic-DeepLab keys) to ``cfg``.

    Idempotent: calling it twice leaves values already set (e.g. merged from a file) untouched.
    """
    if "DEPTH_HEAD" in cfg.MODEL:
        return cfg
    add_panoptic_deeplab_config(cfg)  # also calls add_deeplab_config

    # ---- depth decoder (PanopticDepthLab's third branch) ----
    cfg.MODEL.DEPTH_HEAD = CN()
    cfg.MODEL.DEPTH_HEAD.NAME = "PanopticDepthLabDepthHead"
    cfg.MODEL.DEPTH_HEAD.IN_FEATURES = ["res2", "res3", "res5"]
    cfg.MODEL.DEPTH_HEAD.PROJECT_CHANNELS = [32, 64]
    cfg.MODEL.DEPTH_HEAD.ASPP_CHANNELS = 256
    cfg.MODEL.DEPTH_HEAD.ASPP_DILATIONS = [6, 12, 18]
    cfg.MODEL.DEPTH_HEAD.ASPP_DROPOUT = 0.1
    cfg.MODEL.DEPTH_HEAD.CONVS_DIM = 128
    cfg.MODEL.DEPTH_HEAD.HEAD_CHANNELS = 32
    cfg.MODEL.DEPTH_HEAD.COMMON_STRIDE = 4
    cfg.MODEL.DEPTH_HEAD.NORM = "SyncBN"
    # How the predictor's raw output becomes metres: "log" (exp of the output, clamped to
    # [MIN_DEPTH, MAX_DEPTH]) or "sigmoid" (MAX_DEPTH * sigmoid, the SafeTrip-Q HydraNet choice).
    cfg.MODEL.DEPTH_HEAD.OUTPUT_TYPE = "log"
    cfg.MODEL.DEPTH_HEAD.MIN_DEPTH = 1e-3
    cfg.MODEL.DEPTH_HEAD.MAX_DEPTH = 80.0
    # Weighted sum of depth losses: any of "l1" (masked L1, the Panoptic-DepthLab seed's loss),
    # "berhu" (reverse / inverse Huber), "silog" (scale-invariant log).
    cfg.MODEL.DEPTH_HEAD.LOSSES = ["l1"]
    cfg.MODEL.DEPTH_HEAD.LOSS_WEIGHTS = [1.0]
    # BerHu's switch point c: "relative" c = BERHU_THRESHOLD * max |residual| in the batch (Laina et
    # al., HydraNet); "absolute" c = BERHU_THRESHOLD on the loss's scale (SafeTrip-Q: 0.1 on depth / 80 m).
    cfg.MODEL.DEPTH_HEAD.BERHU_THRESHOLD = 0.2
    cfg.MODEL.DEPTH_HEAD.BERHU_THRESHOLD_MODE = "relative"
    cfg.MODEL.DEPTH_HEAD.SILOG_VARIANCE_FOCUS = 0.85
    cfg.MODEL.DEPTH_HEAD.LOSS_WEIGHT = 1.0

    # ---- data ----
    # Pseudo-label folders (tools/generate_pseudo_labels.py --output DIR) registered before the data
    # is built, under the names the tool prints (<dataset>_pseudo_<task>), for DATASETS.TRAIN / TEST.
    cfg.DATASETS.PSEUDO_LABELS = []

    # ---- evaluation ----
    cfg.TEST.DEPTH = CN()
    # The valid ground-truth range (min, max) in metres comes from the dataset's metadata
    # ``depth_range``, for the training mask and the metrics alike.
    cfg.TEST.DEPTH.CROP = ""  # "", "garg", "eigen" (KITTI evaluation crops) or "nyu" (NYUv2 crop)
    cfg.TEST.DEPTH.MEDIAN_SCALING = False
    # Depth-aware PQ thresholds on the relative depth error (ViP-DeepLab's lambda).
    cfg.TEST.DEPTH.DPQ_THRESHOLDS = [0.1, 0.25, 0.5]

    _add_hydranet_config(cfg)
    _add_segdep_model_config(cfg)
    _add_segdep_text_config(cfg)
    _add_depth_completion_config(cfg)
    return cfg


def _add_hydranet_config(cfg):
    """``MODEL.HYDRANET``: MobileNetV2 + Light-Weight RefineNet + one light branch per task.

    HydraNet shares the keys that say what its outputs mean with the other families:
    ``MODEL.SEM_SEG_HEAD.{NUM_CLASSES, IGNORE_VALUE}`` and ``MODEL.DEPTH_HEAD.{OUTPUT_TYPE, MIN_DEPTH,
    MAX_DEPTH, LOSSES, LOSS_WEIGHTS, BERHU_THRESHOLD, SILOG_VARIANCE_FOCUS}`` (how depth is
    parameterised and which depth loss; ``OUTPUT_TYPE: "sigmoid"`` is the SafeTrip-Q variant, its
    BerHu computed on depth / MAX_DEPTH). The depth head's decoder keys and ``LOSS_WEIGHT`` are
    PanopticDepthLab's; HydraNet's lambda is ``MODEL.HYDRANET.DEPTH_LOSS_WEIGHT``.
    """
    if "HYDRANET" in cfg.MODEL:
        return
    cfg.MODEL.HYDRANET = CN()
    # Backbone (build_mobilenetv2_backbone): norm of torchvision's blocks ("BN", "SyncBN",
    # "FrozenBN", ...), the taps the decoder reads, and a local torchvision ImageNet checkpoint
    # (features.N.* keys; "" = random init). MODEL.WEIGHTS still loads whole-model checkpoints.
    cfg.MODEL.HYDRANET.NORM = "BN"
    cfg.MODEL.HYDRANET.BACKBONE_OUT_FEATURES = ["l1", "l2", "l3", "l4", "l5", "l6"]
    cfg.MODEL.HYDRANET.BACKBONE_WEIGHTS = ""
    # Light-Weight RefineNet decoder: projection width and CRP steps (256 / 4 in the paper).
    cfg.MODEL.HYDRANET.DECODER_CHANNELS = 256
    cfg.MODEL.HYDRANET.CRP_STAGES = 4
    # Inputs are padded to a multiple of this (the backbone's output stride).
    cfg.MODEL.HYDRANET.SIZE_DIVISIBILITY = 32
    # L = SEG_LOSS_WEIGHT * L_seg + DEPTH_LOSS_WEIGHT * L_depth (lambda = 0.5 in the paper).
    cfg.MODEL.HYDRANET.SEG_LOSS_WEIGHT = 1.0
    cfg.MODEL.HYDRANET.DEPTH_LOSS_WEIGHT = 0.5
    # Per-class cross-entropy weights (NUM_CLASSES floats); [] = unweighted.
    cfg.MODEL.HYDRANET.CLASS_WEIGHTS = []
    # Or a class-weights JSON (datasets/prepare_sidewalk.py writes one beside the data); a relative
    # path is under $DETECTRON2_DATASETS (default "datasets"). Not both.
    cfg.MODEL.HYDRANET.CLASS_WEIGHTS_FILE = ""
    # Kendall uncertainty weighting (SafeTrip-Q): learned log-variances s_i replace the two loss
    # weights above, L = sum_i exp(-s_i) L_i + s_i.
    cfg.MODEL.HYDRANET.UNCERTAINTY_WEIGHTING = False


def _add_segdep_model_config(cfg):
    """``MODEL.SEGDEP``: HRNetV2 + FPN scale alignment (+ the text and task heads of the SegDep family)."""
    if "SEGDEP" in cfg.MODEL:
        return
    cfg.MODEL.SEGDEP = CN()
    # ---- backbone + FPN ----
    # build_hrnet_backbone: timm model name ("hrnet_w32"; "hrnet_w18_small" for CPU runs), the branches
    # it outputs (hr1..hr4 = strides 4, 8, 16, 32), and a local checkpoint ("" = random init): timm's
    # ImageNet file, an HRNet-Semantic-Segmentation (Cityscapes) model or a detectron2 .pth / .pkl.
    cfg.MODEL.SEGDEP.HRNET_NAME = "hrnet_w32"
    cfg.MODEL.SEGDEP.HRNET_OUT_FEATURES = ["hr1", "hr2", "hr3", "hr4"]
    cfg.MODEL.SEGDEP.HRNET_WEIGHTS = ""
    # Norm of the backbone ("BN", "SyncBN", "FrozenBN") and of the FPN's 1x1 convs (any detectron2 norm).
    cfg.MODEL.SEGDEP.NORM = "BN"
    # ScaleAlignmentFPN: every branch projected to FPN_CHANNELS at 1/4 resolution, fused by "sum" or
    # "concat" (+ 1x1 conv, HRNetV2's fusion).
    cfg.MODEL.SEGDEP.FPN_CHANNELS = 256
    cfg.MODEL.SEGDEP.FPN_FUSE = "concat"
    # ---- fusion, heads, losses, optimiser ----
    # SegDep reuses MODEL.SEM_SEG_HEAD.{NUM_CLASSES, IGNORE_VALUE} and MODEL.DEPTH_HEAD.{OUTPUT_TYPE,
    # MIN_DEPTH, MAX_DEPTH, LOSSES, LOSS_WEIGHTS, BERHU_THRESHOLD, SILOG_VARIANCE_FOCUS}, as HydraNet does.
    # Class names of the closed-set classes, in label order, for the text encoder ([] = the metadata
    # ``stuff_classes`` of DATASETS.TRAIN[0], cleaned: "TrafficSign" -> "traffic sign").
    cfg.MODEL.SEGDEP.CLASS_NAMES = []
    # Text-vision fusion: FUSION_LAYERS blocks of multi-head cross-attention (pixel features at 1/4
    # resolution are the queries, the vocabulary's text embeddings the keys / values), each with
    # residual + LayerNorm + MLP (hidden = FUSION_MLP_RATIO x FPN_CHANNELS) + residual + LayerNorm.
    # FPN_CHANNELS must be divisible by FUSION_HEADS. The open-vocab head projects the fused
    # pixels into the text space (the text encoder's embed_dim, no key).
    cfg.MODEL.SEGDEP.FUSION_HEADS = 8
    cfg.MODEL.SEGDEP.FUSION_LAYERS = 1
    cfg.MODEL.SEGDEP.FUSION_MLP_RATIO = 4
    # Width of the 3x3 conv of each head (closed-set, depth, open-vocab); 0 = FPN_CHANNELS.
    cfg.MODEL.SEGDEP.HEAD_CHANNELS = 0
    # L = SEG * focal + DEPTH * depth + OPEN_VOCAB * CE(prompt logits) + DISTILL * KL(closed-set ||
    # prompt) + ALIGN * InfoNCE(pooled class pixel embeddings, text embeddings).
    cfg.MODEL.SEGDEP.SEG_LOSS_WEIGHT = 1.0
    cfg.MODEL.SEGDEP.DEPTH_LOSS_WEIGHT = 1.0
    cfg.MODEL.SEGDEP.OPEN_VOCAB_LOSS_WEIGHT = 1.0
    cfg.MODEL.SEGDEP.DISTILL_LOSS_WEIGHT = 0.5
    cfg.MODEL.SEGDEP.ALIGN_LOSS_WEIGHT = 0.1
    # Boundary-aware focal loss: focusing gamma; pixels within BOUNDARY_BAND pixels of a label change
    # weigh 1 + BOUNDARY_BOOST (BOOST 0 or BAND 0 = plain focal loss; GAMMA 0 too = cross-entropy).
    cfg.MODEL.SEGDEP.FOCAL_GAMMA = 2.0
    cfg.MODEL.SEGDEP.BOUNDARY_BAND = 3
    cfg.MODEL.SEGDEP.BOUNDARY_BOOST = 2.0
    # Per-class weights of the closed-set loss (NUM_CLASSES floats); [] = unweighted.
    cfg.MODEL.SEGDEP.CLASS_WEIGHTS = []
    cfg.MODEL.SEGDEP.DISTILL_TEMPERATURE = 1.0
    cfg.MODEL.SEGDEP.ALIGN_TEMPERATURE = 0.07
    # Referring head (free-form queries -> one binary mask each): L += REFERRING_BCE_WEIGHT * BCE +
    # REFERRING_DICE_WEIGHT * Dice of each query's mask against its target (records with ``queries``,
    # e.g. vkitti2_referring_*). Each query's sentence embedding attends to the image's referring pixel
    # embeddings with REFERRING_HEADS heads (must divide the text encoder's embed_dim).
    cfg.MODEL.SEGDEP.REFERRING_BCE_WEIGHT = 1.0
    cfg.MODEL.SEGDEP.REFERRING_DICE_WEIGHT = 1.0
    cfg.MODEL.SEGDEP.REFERRING_HEADS = 8
    # Zero-shot protocol: class names (raw or cleaned) left out of training. Their pixels are ignored
    # by every segmentation loss (closed-set focal, open-vocab CE, distillation, InfoNCE; depth is still
    # learnt there) and their names never reach the text encoder in training, so the open-vocab head
    # meets them first at inference. The closed-set head keeps NUM_CLASSES outputs (untrained ones for
    # these classes): its sem_seg is not the zero-shot result, open_vocab_seg is.
    cfg.MODEL.SEGDEP.HELD_OUT_CLASSES = []
    # Parameter groups (SegDepTrainer.build_optimizer): the pretrained modules (HRNet backbone, and the
    # text tower when FREEZE_TEXT_ENCODER is False) learn at BASE_LR x this; new modules at BASE_LR.
    cfg.MODEL.SEGDEP.BACKBONE_LR_MULTIPLIER = 0.1
    # Inference: ``panoptic_seg`` regions come from the closed-set argmax (one segment per stuff class,
    # one per connected component of a thing class); smaller segments are void (-1).
    cfg.MODEL.SEGDEP.MIN_SEGMENT_AREA = 64
    # Inputs are padded to a multiple of this (at least HRNet's 32).
    cfg.MODEL.SEGDEP.SIZE_DIVISIBILITY = 32
    # ---- temporal refinement (motion estimation + refinement; off by default) ----
    # TEMPORAL: a light motion head (TEMPORAL_CHANNELS wide) estimates the flow from the current frame's
    # 1/4-resolution FPN features to the previous frame's; the previous features are warped (grid_sample)
    # and fused with a learned per-pixel gate before every head (segdep_d2.modeling.heads.temporal).
    # Inference: inputs with ``sequence_id`` + ``frame_index`` use the state of their sequence when the
    # stored frame is at most TEMPORAL_MAX_FRAME_GAP frames before (1: only frame_index == previous + 1);
    # anything else (single images, a sequence's first frame, a gap, a repeated or earlier frame, another
    # image size) takes the plain path. The model keeps the last TEMPORAL_MAX_SEQUENCES sequences' features
    # (least recently used dropped); SegDep.reset_temporal_state() and model.train() clear them.
    # Training: inputs with ``prev_image`` (the previous frame, same augmentation) train the module; others
    # take the plain path. TEMPORAL_FLOW_LOSS_WEIGHT > 0 adds ``loss_temporal_flow``: L1 (pixels at the
    # input size) between the predicted flow and ``prev_flow`` (2, H, W) = the current -> previous flow
    # (VKITTI2 backwardFlow), over ``prev_flow_valid`` (H, W); an exact 0 for a batch without it.
    cfg.MODEL.SEGDEP.TEMPORAL = False
    cfg.MODEL.SEGDEP.TEMPORAL_CHANNELS = 64
    cfg.MODEL.SEGDEP.TEMPORAL_MAX_FRAME_GAP = 1
    cfg.MODEL.SEGDEP.TEMPORAL_MAX_SEQUENCES = 8
    cfg.MODEL.SEGDEP.TEMPORAL_FLOW_LOSS_WEIGHT = 0.0


# CLIP zero-shot prompt templates for class names (a street-scene flavoured subset of CLIP's ImageNet set).
SEGDEP_PROMPT_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a {} in a street scene.",
    "a photo of a {} in the scene.",
    "there is a {} in the scene.",
    "a cropped photo of the {}.",
    "a blurry photo of a {}.",
)


def _add_segdep_text_config(cfg):
    """``MODEL.SEGDEP`` text-encoder keys (ClipTextEncoder), only those not set yet. Called after
    ``_add_segdep_model_config``, which returns early when the node already exists."""
    if "SEGDEP" not in cfg.MODEL:
        cfg.MODEL.SEGDEP = CN()
    text_keys = {
        # open_clip model config whose text tower is built (alone), and a local open_clip checkpoint
        # (.bin / .pt / .safetensors; full-model, text.* or text-only keys). "" = random init + warning.
        # OpenAI's original weights need the "-quickgelu" config (e.g. "ViT-B-32-quickgelu").
        "CLIP_MODEL": "ViT-B-32",
        "CLIP_WEIGHTS": "",
        "FREEZE_TEXT_ENCODER": True,
        # Each class name goes through every template; prompt embeddings averaged, then re-normalised.
        "PROMPT_TEMPLATES": list(SEGDEP_PROMPT_TEMPLATES),
        # LRU cache of prompt embeddings (used while frozen or in eval mode); 0 disables it.
        "TEXT_CACHE_SIZE": 4096,
    }
    for key, value in text_keys.items():
        if key not in cfg.MODEL.SEGDEP:
            cfg.MODEL.SEGDEP[key] = value


def _add_depth_completion_config(cfg):
    """``MODEL.DEPTH_COMPLETION`` (RGB + sparse LiDAR + optional semantics -> dense metric depth, seed 004),
    the sparse input's ``INPUT.SPARSE_DEPTH`` and ``TEST.DEPTH.COMPLETION``.

    The depth range is ``MODEL.DEPTH_HEAD.{MIN_DEPTH, MAX_DEPTH}``: the network outputs MAX_DEPTH * sigmoid,
    its sparse input is divided by MAX_DEPTH, and its losses are on depth / MAX_DEPTH.
    """
    if "SPARSE_DEPTH" not in cfg.INPUT:
        cfg.INPUT.SPARSE_DEPTH = CN()
        # The sparse input the mapper delivers (``sparse_depth``) to a model that reads one: 0 = the
        # record's own sparse file (``sparse_depth_file_name``, e.g. KITTI's velodyne_raw); N > 0 = N points
        # sampled from the dense ground truth (the NYUv2 protocol, e.g. 200 or 500; fixed per image at test).
        cfg.INPUT.SPARSE_DEPTH.NUM_SAMPLES = 0
    if "COMPLETION" not in cfg.TEST.DEPTH:
        # Evaluate depth with the depth-completion evaluator (the KITTI / NYU depth-completion metrics) even
        # for a model that takes no sparse input (a monocular baseline); a DepthCompletion model uses it anyway.
        cfg.TEST.DEPTH.COMPLETION = False
    if "DEPTH_COMPLETION" in cfg.MODEL:
        return
    node = cfg.MODEL.DEPTH_COMPLETION = CN()
    # ---- encoder ----
    # "conv": the seed's encoder, one stage per ENCODER_CHANNELS entry (a stride-2 3x3 conv + a 3x3 conv,
    # each with NORM + ReLU), on the concatenation of the image, the semantic channels and the sparse stem
    # (5 stages: strides 2 .. 32). "backbone": any detectron2 backbone, ``build_backbone(cfg)``
    # (MODEL.BACKBONE.NAME: e.g. build_resnet_backbone with MODEL.RESNETS.DEPTH 18 / 34 and
    # RES2_OUT_CHANNELS 64, or build_mobilenetv2_backbone); it sees the image plus a zero-initialised 1x1
    # projection of the sparse stem and semantic channels (a sum, so pretrained weights start unchanged),
    # and BACKBONE_FEATURES are the decoder's skips (the backbone must output them; the coarsest at
    # stride 16 or more).
    node.ENCODER = "conv"
    node.ENCODER_CHANNELS = [32, 64, 128, 256, 256]
    node.BACKBONE_FEATURES = ["res2", "res3", "res4", "res5"]
    # Norm of the conv encoder, sparse stem and decoder ("BN", "SyncBN", "GN", "" = none, ...).
    node.NORM = "BN"
    # A separate light stem (3x3 conv + NORM + ReLU) on [sparse depth / MAX_DEPTH, validity mask], so a
    # missing point (mask 0) is not a point at zero depth. Its output also joins the full-resolution skip.
    node.SPARSE_STEM_CHANNELS = 16
    # "none": the network predicts depth = MAX_DEPTH * sigmoid (the seed's). "dilation": the sparse points are
    # first spread by a morphological fill (each empty pixel takes the nearest surface within a growing
    # window: max-pooling of inverse depth with PREFILL_KERNELS, IP-Basic-style), the stem also sees that map,
    # and where it has a value the network predicts a correction of it, depth = fill * exp(r), r = 0 at the
    # start: an untrained model is already the fill, and training refines it (pixels the fill does not reach
    # keep MAX_DEPTH * sigmoid).
    node.PREFILL = "none"
    node.PREFILL_KERNELS = [3, 3, 5, 5, 7, 7, 9, 9, 13, 13, 17, 17]
    # ---- semantic guidance ----
    # "none"; "labels": the record's semantic label map (``sem_seg`` in the inputs, IGNORE_VALUE = no
    # label, a sample without one has none); "guide": the softmax of a frozen segmentation model
    # (GUIDE_CONFIG + GUIDE_WEIGHTS: any registered segdep_d2 / detectron2 meta-arch with a ``sem_seg``
    # output, e.g. a trained HydraNet), run on the same images. NUM_CLASSES of them (0 =
    # MODEL.SEM_SEG_HEAD.NUM_CLASSES; a guide must predict exactly that many).
    node.SEMANTIC_INPUT = "none"
    # How the labels / class probabilities enter: "onehot" (NUM_CLASSES channels; probabilities as they
    # are) or "embedding" (a learned SEMANTIC_CHANNELS-wide embedding per class; the expected embedding
    # under the guide's probabilities). 2 channels = the seed's RGB + sparse + 2 extra-channel layout.
    node.SEMANTIC_ENCODING = "embedding"
    node.SEMANTIC_CHANNELS = 2
    node.NUM_CLASSES = 0
    node.GUIDE_CONFIG = ""
    node.GUIDE_WEIGHTS = ""  # "" = the guide config's MODEL.WEIGHTS
    # ---- decoder ----
    # Width of the decoder at each predicted scale, coarsest 1/16 -> finest 1/1 (levels coarser than 1/16,
    # between a stride-32 encoder and the first prediction, take the first width). Each level upsamples x2
    # ("deconv": 4x4 transposed conv, the seed's; "bilinear": bilinear + 3x3 conv), concatenates the
    # encoder's skip at its stride and applies a 3x3 conv; a 3x3 conv predicts its depth.
    node.DECODER_CHANNELS = [256, 128, 64, 32, 16]
    node.UPSAMPLE = "deconv"
    # Inputs are padded to a multiple of this (at least the encoder's coarsest stride).
    node.SIZE_DIVISIBILITY = 32
    # ---- losses (on depth / MAX_DEPTH) ----
    # loss_depth_l1 = sum_s w_s * masked L1 at scale s (1/16, 1/8, 1/4, 1/2, 1/1), each scale's target
    # nearest-downsampled from the full-resolution ground truth; LOSS_RELATIVE: |d - d*| / d* instead.
    node.LOSS_SCALE_WEIGHTS = [0.0625, 0.125, 0.25, 0.5, 1.0]
    node.LOSS_RELATIVE = False
    # loss_depth_l2 = L2_WEIGHT * the same with squared errors (0 = off).
    node.L2_WEIGHT = 0.0
    # loss_smoothness = SMOOTHNESS_WEIGHT * edge-aware first-order smoothness of the finest depth (0 = off).
    node.SMOOTHNESS_WEIGHT = 0.0
    # An extra output channel at full resolution -> ``depth_confidence`` in (0, 1) at inference, trained
    # (loss_depth_confidence = CONFIDENCE_LOSS_WEIGHT * BCE) to be the probability that the pixel's
    # prediction is within a factor 1.25 of the ground truth (delta_1).
    node.PREDICT_CONFIDENCE = False
    node.CONFIDENCE_LOSS_WEIGHT = 0.1
