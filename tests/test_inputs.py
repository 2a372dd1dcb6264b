"""deploy/inputs.py: the conversion rule on hand-made images with expected arrays worked out by hand, and what
load() makes of files, directories, .npy and IDX inputs. No model here (tests/test_predict.py runs them)."""
import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from deploy import inputs

BLUE_GREY = (30, 60, 90)  # "L" = 0.299*30 + 0.587*60 + 0.114*90 = 54.45 -> 54; inverted: 201


def rectangle_picture() -> Image.Image:
    """40x20, white, a 20x10 blue-grey rectangle at x 10..29, y 5..14: a dark product on a light background."""
    img = Image.new("RGB", (40, 20), (255, 255, 255))
    img.paste(BLUE_GREY, (10, 5, 30, 15))
    return img


def expected_wide() -> np.ndarray:
    # --invert: background 0, rectangle 201. Trimmed to the 20x10 rectangle, fitted to 28x14 (a constant stays
    # constant under LANCZOS), centred: rows (28 - 14) // 2 = 7 .. 20, all columns.
    a = np.zeros((28, 28), np.uint8)
    a[7:21, :] = 201
    return a


def test_colour_png_of_another_size_inverted_is_exact(tmp_path):
    rectangle_picture().save(tmp_path / "r.png")
    np.testing.assert_array_equal(inputs.read_image(tmp_path / "r.png", invert=True), expected_wide())


def test_colour_jpeg_of_another_size_inverted_within_jpeg_error(tmp_path):
    rectangle_picture().save(tmp_path / "r.jpg", quality=95)
    got = inputs.read_image(tmp_path / "r.jpg", invert=True).astype(int)
    diff = np.abs(got - expected_wide())
    assert diff.max() <= 12 and diff.mean() < 1.5, (diff.max(), diff.mean())  # seen: 6 and 0.37


def test_without_invert_a_light_background_stays_light(tmp_path):
    # The corner colour is white, so the white border is trimmed, but no --invert: the rectangle stays 54.
    rectangle_picture().save(tmp_path / "r.png")
    got = inputs.read_image(tmp_path / "r.png")
    assert got[7:21].min() == got[7:21].max() == 54 and got[:7].max() == got[21:].max() == 0


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the 40x20 picture is 20x40 upright
    rectangle_picture().save(tmp_path / "e.png", exif=exif)
    expected = np.zeros((28, 28), np.uint8)
    expected[:, 7:21] = 201  # the rectangle is now 10 wide, 20 tall: fitted to 14x28, columns 7..20
    np.testing.assert_array_equal(inputs.read_image(tmp_path / "e.png", invert=True), expected)


@pytest.mark.parametrize("invert, value", [(False, 200), (True, 55)])
def test_alpha_is_composited_onto_the_background(tmp_path, invert, value):
    # 28x28, so nothing is trimmed or resized: the transparent pixels (white, alpha 0) must become the dark
    # background either way (black; white then negated with --invert), not the white stored under the alpha.
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[5:10, 3:21] = (200, 200, 200, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    expected = np.zeros((28, 28), np.uint8)
    expected[5:10, 3:21] = value
    np.testing.assert_array_equal(inputs.read_image(tmp_path / "a.png", invert=invert), expected)


def test_blank_image_is_resized_whole(tmp_path):
    Image.new("L", (50, 30), 100).save(tmp_path / "blank.png")
    expected = np.zeros((28, 28), np.uint8)
    expected[5:22] = 100  # 50x30 -> 28x17 (30 * 28 / 50 = 16.8), rows (28 - 17) // 2 = 5 .. 21
    np.testing.assert_array_equal(inputs.read_image(tmp_path / "blank.png"), expected)


def test_fashion_mnist_images_round_trip_exactly(fmnist, tmp_path):
    for i, image in enumerate(fmnist.test_x[:20]):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
        np.testing.assert_array_equal(inputs.read_image(tmp_path / f"{i}.png"), image)


def test_16_bit_grey_keeps_its_top_8_bits(fmnist, tmp_path):
    image = fmnist.test_x[0]
    Image.fromarray(image.astype(np.uint16) * 257).save(tmp_path / "g16.png")  # 0..255 -> 0..65535
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    np.testing.assert_array_equal(inputs.read_image(tmp_path / "g16.png"), image)


def write_idx_gz(path, images: np.ndarray) -> None:
    path.write_bytes(gzip.compress(struct.pack(">IIII", 0x803, *images.shape) + images.tobytes()))


def test_load_names_and_arrays_of_every_kind(fmnist, tmp_path):
    x = fmnist.test_x[:6]
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in (2, 0, 1):  # written out of order: the directory is read sorted by name
        Image.fromarray(x[i]).save(photos / f"img{i}.png")
    (photos / "notes.txt").write_text("not an image")
    np.save(tmp_path / "batch.npy", x[3:5])
    np.save(tmp_path / "one.npy", x[5])
    write_idx_gz(tmp_path / "t-images-idx3-ubyte.gz", x[:2])
    (tmp_path / "u-images-idx3-ubyte").write_bytes(gzip.decompress((tmp_path / "t-images-idx3-ubyte.gz").read_bytes()))

    got = inputs.load([str(photos), str(tmp_path / "batch.npy"), str(tmp_path / "one.npy"),
                       str(tmp_path / "t-images-idx3-ubyte.gz"), str(tmp_path / "u-images-idx3-ubyte")])
    assert got.names == [f"{photos}/img0.png", f"{photos}/img1.png", f"{photos}/img2.png",
                         f"{tmp_path}/batch.npy[0]", f"{tmp_path}/batch.npy[1]", f"{tmp_path}/one.npy",
                         f"{tmp_path}/t-images-idx3-ubyte.gz[0]", f"{tmp_path}/t-images-idx3-ubyte.gz[1]",
                         f"{tmp_path}/u-images-idx3-ubyte[0]", f"{tmp_path}/u-images-idx3-ubyte[1]"]
    np.testing.assert_array_equal(got.images, np.concatenate([x[:6], x[:2], x[:2]]))
    assert got.images.dtype == np.uint8 and got.images.flags.writeable
    assert got.notes == [f"{photos}: 3 images found"]


def test_an_empty_file_is_called_empty_whatever_its_kind(tmp_path):
    for name in ("e.png", "e.jpg", "e.npy", "e-images-idx3-ubyte.gz", "e-images-idx3-ubyte"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(inputs.InputError) as e:
            inputs.load([str(tmp_path / name)])
        assert str(e.value) == f"{tmp_path / name}: empty file (0 bytes)"


def test_every_bad_file_is_named_up_to_max_listed_then_counted(fmnist, tmp_path, monkeypatch):
    d = tmp_path / "d"
    d.mkdir()
    Image.fromarray(fmnist.test_x[0]).save(d / "a-good.png")
    for name in ("b.png", "c.png", "d.png", "e.png"):
        (d / name).write_bytes(b"")
    empty = [f"{d / n}: empty file (0 bytes)" for n in ("b.png", "c.png", "d.png", "e.png")]
    with pytest.raises(inputs.InputError) as e:
        inputs.load([str(d)])
    assert str(e.value) == ("4 of 5 input files cannot be used (fix or remove them): " + "; ".join(empty[:3])
                            + "; and 1 more")
    monkeypatch.setattr(inputs, "MAX_LISTED", 4)  # no "and 0 more" when all are listed
    with pytest.raises(inputs.InputError) as e:
        inputs.load([str(d)])
    assert str(e.value) == "4 of 5 input files cannot be used (fix or remove them): " + "; ".join(empty)


def test_every_file_is_decoded_before_the_refusal(fmnist, tmp_path):
    # The bad file comes first: the good ones after it are still read (progress sees all), and one message.
    (tmp_path / "0.png").write_bytes(b"")
    for i in (1, 2):
        Image.fromarray(fmnist.test_x[i]).save(tmp_path / f"{i}.png")
    seen = []
    with pytest.raises(inputs.InputError) as e:
        inputs.load([str(tmp_path)], progress=lambda done, total: seen.append((done, total)))
    assert str(e.value) == f"{tmp_path / '0.png'}: empty file (0 bytes)"
    assert seen == [(1, 3), (2, 3), (3, 3)]
