"""engine.images: converting uploads to RGB without changing their tones."""


def test_sixteen_bit_images_keep_their_tones():
    import numpy as np
    from PIL import Image

    from engine.images import to_rgb

    mid_grey = Image.fromarray(np.full((16, 16), 32768, np.uint16))
    assert to_rgb(mid_grey).getpixel((3, 3)) == (128, 128, 128)  # not stretched to white or black
    half = Image.fromarray(np.full((16, 16), 0.5, np.float32))
    assert to_rgb(half).getpixel((3, 3)) == (128, 128, 128)
