"""Every number the training stage shares, in one place (timm's constants module style)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Eval preprocessing: shorter side to RESIZE, then a centre CROP. RESIZE == CROP keeps
# the whole shorter side (TrashNet frames are 4:3), unlike the old project's squash.
RESIZE = 224
CROP = 224
INTERPOLATION = "bilinear"

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)
DEFAULT_SEED = 42

# Near-duplicate threshold: bits that may differ between two 256-bit difference hashes.
# TrashNet's cardboard83/208/221 vs paper385 differ by 5-6 bits. Above ~7 bits flat,
# texture-poor sheets of paper start to match unrelated photos, and union-find would
# chain them into big false groups, so the threshold stays tight.
NEAR_DUP_BITS = 6

# Probability below which the server flags a prediction as uncertain (calibrated), where
# no threshold has been chosen (a checkpoint before export).
UNCERTAIN_BELOW = 0.5
# Export's threshold rule: the lowest calibrated confidence at which the answered
# validation pictures are at least this often right.
ANSWERED_ACCURACY = 0.98
