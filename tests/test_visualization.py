"""visualize_attributions: the figure's layout, what each panel shows, and saving."""
import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution
from matplotlib.figure import Figure

from captum_xcam.visualization import visualize_attributions


def images_and_maps(n=2, size=32):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, size, size, generator=g)
    cam = torch.zeros(n, 1, 4, 4)
    peaks = [(1, 2), (3, 0)]  # a single peak, at a different place in each image
    for i in range(n):
        cam[i, 0, peaks[i % 2][0], peaks[i % 2][1]] = 1.0 + i
    signed = torch.randn(n, 3, size, size, generator=g)  # like Integrated Gradients
    return images, {"CAM": cam, "Signed": signed}


def heat_map_of(ax):
    r"""The array of the last image drawn on the axes (the heat map over the image)."""
    return ax.get_images()[-1]


def test_one_row_per_image_and_a_panel_per_map():
    images, maps = images_and_maps()
    guided = {"Guided CAM": torch.randn(2, 3, 32, 32)}
    fig = visualize_attributions(images, maps, targets=torch.tensor([1, 0]),
                                 scores=[0.25, 0.875], class_names=["cat", "dog"],
                                 guided=guided, image_titles=["a.png", "b.png"])
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == 2 * 4
    titles = [ax.get_title() for ax in panels]
    assert titles[:4] == ["a.png", "CAM\ndog: 0.25", "Signed\ndog: 0.25", "Guided CAM\ndog: 0.25"]
    assert titles[4:] == ["b.png", "CAM\ncat: 0.88", "Signed\ncat: 0.88", "Guided CAM\ncat: 0.88"]


def test_cams_are_upsampled_and_blended_over_the_image():
    images, maps = images_and_maps()
    fig = visualize_attributions(images, maps)
    rows = np.array([ax for ax in fig.axes if ax.get_images()]).reshape(2, 3)
    for row in range(2):
        blended = rows[row, 1]
        assert len(blended.get_images()) == 2  # grey image, then the heat map
        heat = heat_map_of(blended)
        data = np.asarray(heat.get_array())
        assert data.shape == (32, 32)
        expected = LayerAttribution.interpolate(maps["CAM"][row:row + 1], (32, 32),
                                                interpolate_mode="bilinear")[0, 0]
        assert np.unravel_index(data.argmax(), data.shape) == np.unravel_index(
            int(expected.argmax()), expected.shape)
        assert heat.get_alpha() == 0.5 and heat.get_cmap().name == "jet"
        assert heat.norm.vmin == 0  # a ReLU'd map: positive values only
        assert heat_map_of(rows[row, 2]).norm.vmin == -1  # a signed map: both signs
        assert heat_map_of(rows[row, 2]).get_array().shape == (32, 32)


def test_the_image_panel_shows_the_image():
    images, maps = images_and_maps(n=1)
    images = images * 4 - 2  # normalised-looking: rescaled to [0, 1] for display
    fig = visualize_attributions(images, {"CAM": maps["CAM"][:1]})
    shown = np.asarray(fig.axes[0].get_images()[0].get_array())
    assert shown.shape == (32, 32, 3) and shown.min() == 0 and shown.max() == 255
    uint8 = (torch.rand(1, 3, 32, 32) * 255).to(torch.uint8)
    fig = visualize_attributions(uint8, {"CAM": maps["CAM"][:1]})
    shown = np.asarray(fig.axes[0].get_images()[0].get_array())
    assert np.array_equal(shown, uint8[0].permute(1, 2, 0).numpy())


def test_an_all_zero_map_is_drawn_without_error():
    images, _ = images_and_maps(n=1)
    fig = visualize_attributions(images, torch.zeros(1, 1, 4, 4),
                                 guided={"Guided": torch.zeros(1, 3, 32, 32)})
    assert "(zero map)" in fig.axes[1].get_title() and "(zero map)" in fig.axes[2].get_title()


def test_colour_bars():
    images, maps = images_and_maps()
    assert len(visualize_attributions(images, maps).axes) == 2 * 3
    # One colour bar axis under every panel (hidden under the images, for alignment).
    assert len(visualize_attributions(images, maps, show_colorbar=True).axes) == 2 * 3 * 2


@pytest.mark.parametrize("suffix, magic", [("png", b"\x89PNG"), ("pdf", b"%PDF"),
                                           ("svg", b"<?xml")])
def test_saves_to_png_pdf_and_svg(tmp_path, suffix, magic):
    images, maps = images_and_maps()
    path = tmp_path / f"maps.{suffix}"
    visualize_attributions(images, maps).savefig(path)
    assert path.read_bytes().startswith(magic)


def test_wrong_shapes_are_refused():
    images, maps = images_and_maps()
    with pytest.raises(ValueError, match="N = 2"):
        visualize_attributions(images, {"CAM": maps["CAM"][:1]})
    with pytest.raises(ValueError, match="images must be"):
        visualize_attributions(images[0], maps)
    with pytest.raises(ValueError, match="2 image titles"):
        visualize_attributions(images[:1], {"CAM": maps["CAM"][:1]}, image_titles=["a", "b"])
    with pytest.raises(ValueError, match="3 targets"):
        visualize_attributions(images, maps, targets=[0, 1, 2])
    with pytest.raises(ValueError, match="non-empty dict"):
        visualize_attributions(images, {})
