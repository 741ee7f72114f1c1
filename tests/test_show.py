"""Tests for fastfreeze/utils/show.py: a grid with one titled image per cell and the rest blank."""
import numpy as np

from fastfreeze.utils.show import image_grid


def test_image_grid_layout_titles_and_colours(tmp_path):
    images = np.zeros((5, 4, 4, 3))
    figure = image_grid(images, [f"t{i}" for i in range(5)], colors=["red"] * 5, path=tmp_path / "grid.png")
    assert len(figure.axes) == 6  # ceil(sqrt(5)) = 3 columns, ceil(5 / 3) = 2 rows; the sixth cell blank
    titled = [ax for ax in figure.axes if ax.get_title()]
    assert [ax.get_title() for ax in titled] == ["t0", "t1", "t2", "t3", "t4"]
    assert all(ax.title.get_color() == "red" for ax in titled)
    assert (tmp_path / "grid.png").stat().st_size > 500
