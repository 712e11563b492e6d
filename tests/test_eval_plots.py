"""eval/plots.py: heatmaps grow with their grid, so that every cell's score label stays readable."""

import matplotlib.pyplot as plt
import numpy as np

from eval import plots


def _cell_inches(figure, rows, columns):
    figure.canvas.draw()
    box = figure.axes[0].get_window_extent().transformed(figure.dpi_scale_trans.inverted())
    return box.width / columns, box.height / rows


def test_a_10_by_8_heatmap_gets_readable_cells_and_a_label_in_each(tmp_path):
    depths, lengths = [10.0 * i for i in range(10)], [256 * 2**i for i in range(8)]
    scores = np.linspace(0, 1, 80).reshape(10, 8).tolist()
    scores[3][5] = None  # a missing cell stays blank
    small = plots.heatmap_figure([0.0, 50.0], [256, 512], [[0.1, 0.2], [0.3, 0.4]], title="small")
    large = plots.heatmap_figure(depths, lengths, scores, title="passkey — run step 3")
    try:
        width, height = large.get_size_inches()
        small_width, small_height = small.get_size_inches()
        assert width > small_width and height > small_height  # the figure grows with the cells
        cell_width, cell_height = _cell_inches(large, rows=10, columns=8)
        assert cell_width >= 0.6 and cell_height >= 0.6, (cell_width, cell_height)
        labels = large.axes[0].texts
        assert len(labels) == 79 and {text.get_fontsize() for text in labels} == {plots.ANNOTATION_FONTSIZE}
        assert plots.ANNOTATION_FONTSIZE >= 8
        assert "0.00" in {text.get_text() for text in labels} and "1.00" in {text.get_text() for text in labels}
        # A label fits inside its cell.
        renderer = large.canvas.get_renderer()
        label_box = labels[0].get_window_extent(renderer).transformed(large.dpi_scale_trans.inverted())
        assert label_box.width < cell_width and label_box.height < cell_height
    finally:
        plt.close(small)
        plt.close(large)
    png = plots.depth_length_heatmap(tmp_path / "grid.png", depths, lengths, scores, title="grid")
    header = png.read_bytes()
    assert header[:4] == b"\x89PNG"
    png_width, png_height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
    assert (png_width, png_height) == (round(width * 100), round(height * 100))  # saved at 100 dpi
