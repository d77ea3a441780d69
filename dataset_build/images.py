"""Decoding image files into 8-bit 'RGB' or 'L', and encoding the PNGs training reads."""

import dataclasses
import functools
import io
import os
import re

import numpy as np
import PIL.Image

from dataset_build.errors import BadImage

RESIZE_FILTERS = {
    'box': PIL.Image.Resampling.BOX,
    'lanczos': PIL.Image.Resampling.LANCZOS,
    'bicubic': PIL.Image.Resampling.BICUBIC,
}
DEFAULT_RESIZE_FILTER = 'lanczos'  # upstream's dataset_tool default
_OBJECT_REPR = re.compile(r'\s*<[\w.]+ object at 0x[0-9a-fA-F]+>')  # PIL names its buffer, not the file
_SAME_FORMAT = {'MPO': 'JPEG'}  # camera JPEGs with several pictures decode as MPO: still a JPEG


def is_power_of_two(n):
    return n >= 1 and (n & (n - 1)) == 0


def _composite_on_black(img):
    """Drop the alpha channel by compositing onto black (premultiply): transparent pixels become black."""
    base_mode = 'L' if img.mode in ('LA', 'La') else 'RGB'
    rgba = img.convert('LA' if base_mode == 'L' else 'RGBA')
    out = PIL.Image.new(base_mode, rgba.size, 0)
    out.paste(rgba.convert(base_mode), mask=rgba.getchannel('A'))
    return out


def _sixteen_bit_to_l(img):
    """16-bit grayscale -> 8-bit by rescaling 0..65535 onto 0..255 (PIL's own convert clips instead)."""
    arr = np.asarray(img).astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise BadImage(f'{img.mode} image with values outside 0..65535')
    return PIL.Image.fromarray(((arr * 255 + 32767) // 65535).astype(np.uint8), 'L')


def normalize_mode(img):
    """Bring a decoded PIL image to 'RGB' or 'L'.

    Returns:
        (image, note): note is None when nothing changed, else a short description of the conversion.

    Raises:
        BadImage: for modes with no meaningful 8-bit RGB/L reading (e.g. 32-bit float).
    """
    mode = img.mode
    if mode in ('RGB', 'L'):
        return img, None
    if mode == '1':
        return img.convert('L'), '1-bit -> L'
    if mode in ('P', 'PA'):
        if mode == 'PA' or 'transparency' in img.info:
            return _composite_on_black(img.convert('RGBA')), 'palette with transparency -> RGB (on black)'
        return img.convert('RGB'), 'palette -> RGB'
    if mode == 'RGBX':
        return img.convert('RGB'), 'RGBX -> RGB'
    if mode in ('RGBA', 'RGBa', 'LA', 'La'):
        out = _composite_on_black(img)
        return out, f'{mode} -> {out.mode} (alpha composited on black)'
    if mode in ('CMYK', 'YCbCr', 'LAB', 'HSV'):
        return img.convert('RGB'), f'{mode} -> RGB'
    if mode.startswith('I;16') or mode == 'I':
        return _sixteen_bit_to_l(img), f'{mode} (16-bit) -> L (8-bit)'
    raise BadImage(f'unsupported image mode {mode}')


def _decode_reason(exc):
    text = _OBJECT_REPR.sub('', str(exc)).strip()
    if 'truncated' in text.lower() or isinstance(exc, EOFError):
        return f'truncated or corrupt ({text or type(exc).__name__})'
    return f'cannot decode ({type(exc).__name__}: {text})'


@dataclasses.dataclass
class Decoded:
    image: PIL.Image.Image   # 'RGB' or 'L'
    notes: list              # conversions applied, for the report / manifest
    format: str              # what the bytes are ('JPEG', 'PNG', ...), whatever the file is named


def decode_image(data, name=None):
    """Decode image bytes fully (truncation is detected here, not later) and normalise the mode.

    Args:
        data: The file's bytes.
        name: The file name, to note an extension that does not match the content.

    Returns:
        Decoded.

    Raises:
        BadImage: empty, not an image, truncated, or an unsupported mode.
    """
    if not data:
        raise BadImage('empty file (0 bytes)')
    try:
        img = PIL.Image.open(io.BytesIO(data))
        img.load()
    except PIL.UnidentifiedImageError:
        raise BadImage('not an image file') from None
    except Exception as e:  # PIL raises OSError/SyntaxError/ValueError/DecompressionBombError for bad files
        raise BadImage(_decode_reason(e)) from None
    fmt = _SAME_FORMAT.get(img.format, img.format)
    img, note = normalize_mode(img)
    notes = [n for n in (extension_note(name, fmt) if name else None, note) if n]
    return Decoded(image=img, notes=notes, format=fmt)


@functools.lru_cache(maxsize=None)
def _format_of_extension():
    PIL.Image.init()
    return {ext.lower(): _SAME_FORMAT.get(fmt, fmt) for ext, fmt in PIL.Image.registered_extensions().items()}


def extension_note(name, fmt):
    """'named .jpg but the content is PNG' when the extension and the decoded format disagree, else None."""
    ext = os.path.splitext(name)[1].lower()
    expected = _format_of_extension().get(ext)
    if fmt and expected and expected != fmt:
        return f'named {ext} but the content is {fmt}'
    return None


def encode_png(img):
    """Uncompressed PNG bytes, as upstream writes them (fast to decode; deterministic)."""
    buf = io.BytesIO()
    img.save(buf, format='png', compress_level=0, optimize=False)
    return buf.getvalue()
