"""Image transforms of the paper's training and testing (paper Sec. 3.1, 3.1.4-3.1.5, Appendix).

Images are uint8 (H, W, 3) RGB until ``to_input``, which makes a float32 (3, h, w) array
minus the mean. All random choices take a numpy Generator.
"""
import numpy as np
from PIL import Image

CROP_POSITIONS = ("center", "top-left", "top-right", "bottom-left", "bottom-right")

# The most elongated image accepted: longer side <= MAX_ASPECT x shorter side. Every view and
# the detector resize an image so its shorter side is s (Sec. 3.1, 3.2, 4.1), so an image
# within the bound is at most MAX_ASPECT * s pixels long after resizing and its conv work is
# at most MAX_ASPECT times a square one's; a 10000 x 20 image at s = 256 would otherwise be
# 128,000 pixels long (a 4.4 GiB im2col buffer in conv1). ``minispp.data.imagefolder.load_rgb``
# refuses a more elongated file (a BadImage naming it: data sets report and skip it like an
# unreadable file), and resize_min_side refuses such an array.
MAX_ASPECT = 4


def check_aspect(h, w):
    """ValueError if an h x w image is more elongated than MAX_ASPECT (or empty)."""
    h, w = int(h), int(w)
    if min(h, w) < 1:
        raise ValueError(f"image {h}x{w} has no pixels")
    if max(h, w) > MAX_ASPECT * min(h, w):
        raise ValueError(f"image {h}x{w} (height x width) is more elongated than "
                         f"{MAX_ASPECT}:1 (minispp.data.transforms.MAX_ASPECT): resized to a shorter "
                         f"side s it would be {max(h, w) / min(h, w):.0f} x s long")


def min_side_shape(h, w, s):
    """(h', w') of an h x w image resized so its shorter side is s."""
    if min(h, w) == s:
        return h, w
    scale = s / min(h, w)
    if h <= w:
        return s, max(1, round(w * scale))
    return max(1, round(h * scale)), s


def resize_min_side(img, s):
    """Resize so the shorter side is s, keeping the aspect ratio (bilinear, antialiased).

    An image more elongated than MAX_ASPECT is refused (ValueError; check_aspect), so the
    result is at most MAX_ASPECT * s pixels long."""
    h, w = img.shape[:2]
    check_aspect(h, w)
    if min(h, w) == s:
        return img
    nh, nw = min_side_shape(h, w, s)
    return np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR, reducing_gap=3.0))


def resize_to(img, h, w):
    """Warp to exactly h x w (the 180 input is the 224 crop resized; the 'warp' view)."""
    if img.shape[:2] == (h, w):
        return img
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR, reducing_gap=3.0))


def crop_box(h, w, size, position):
    """(y, x) of a size x size crop at one of CROP_POSITIONS of an h x w image."""
    if h < size or w < size:
        raise ValueError(f"image {h}x{w} is smaller than the {size}x{size} crop")
    if position == "center":
        return (h - size) // 2, (w - size) // 2
    y = 0 if position.startswith("top") else h - size
    x = 0 if position.endswith("left") else w - size
    if position not in CROP_POSITIONS:
        raise ValueError(f"unknown crop position {position!r}; expected one of {CROP_POSITIONS}")
    return y, x


def crop(img, size, position):
    y, x = crop_box(img.shape[0], img.shape[1], size, position)
    return img[y:y + size, x:x + size]


def flip(img):
    return img[:, ::-1]


def rgb_pca(images, max_pixels=200_000, rng=None):
    """Eigenvalues (3,) and eigenvectors (3, 3, columns) of the RGB covariance of pixels
    sampled from uint8 images, on the 0-255 scale (Krizhevsky et al.'s colour PCA)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    per = max(1, max_pixels // max(1, len(images)))
    pix = []
    for img in images:
        flat = img.reshape(-1, 3)
        pix.append(flat[rng.integers(0, len(flat), min(per, len(flat)))])
    pix = np.concatenate(pix).astype(np.float64)
    vals, vecs = np.linalg.eigh(np.cov(pix, rowvar=False))
    return vals[::-1].copy(), vecs[:, ::-1].copy()


def lighting(img_f, eigvals, eigvecs, rng, std=0.1):
    """PCA lighting noise (Krizhevsky et al.): add eigvecs @ (alpha * sqrt(eigvals)),
    alpha ~ N(0, std), to every pixel of a float (H, W, 3) image on the 0-255 scale.

    The eigenvalues here are variances in 0-255 units (thousands); their square roots, the
    spread along each colour axis, give the shift of a few intensity levels that the
    published ImageNet values give (scaling by the variances would shift pixels by hundreds).
    """
    alpha = rng.normal(0.0, std, 3)
    shift = eigvecs @ (alpha * np.sqrt(np.maximum(eigvals, 0)))
    return img_f + shift.astype(img_f.dtype)


def to_input(img, mean, pixel_scale=1.0):
    """uint8 or float (h, w, 3) -> float32 (3, h, w): (img - mean) * pixel_scale.

    mean: a (3, H, W) mean image (warped here to the input size when it differs, as the
    Appendix does) or a scalar such as 128. pixel_scale: 1 / the pixels' standard deviation puts
    the input at unit scale (see train.classify.views)."""
    x = np.ascontiguousarray(np.asarray(img, dtype=np.float32).transpose(2, 0, 1))
    if np.ndim(mean) == 0:
        x -= np.float32(mean)
    else:
        if mean.shape[1:] != x.shape[1:]:
            mean = warp_mean(mean, x.shape[1], x.shape[2])
        x -= mean
    if pixel_scale != 1.0:
        x *= np.float32(pixel_scale)
    return x


def warp_mean(mean, h, w):
    """The (3, H, W) mean image resized to (3, h, w)."""
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(m), mode="F").resize(
        (w, h), Image.BILINEAR)) for m in mean]).astype(np.float32)
