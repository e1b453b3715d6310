"""SPP bin geometry (docs/design.md, "SPP bins") and the window projection (Appendix)."""
import subprocess
import sys

import numpy as np
import pytest

from minispp.geometry import (check_cell_windows, derivation_sources, pyramid_bins, spp_bins,
                              spp_output_length, window_to_feature_map)


def test_appendix_bins_hand_computed_a13_n6():
    # [floor(i 13/6), ceil((i+1) 13/6)) for i = 0..5
    assert spp_bins(13, 6) == [(0, 3), (2, 5), (4, 7), (6, 9), (8, 11), (10, 13)]


def test_spp_bins_fixed_form_equals_appendix_at_a13():
    for n in (6, 3, 2, 1):
        assert spp_bins(13, n, "fixed") == spp_bins(13, n, "appendix"), n


def test_spp_bins_fixed_form_differs_from_appendix_at_a10():
    # Sec. 2.3 form: win 2, stride 1, six windows cover only columns 0..6
    assert spp_bins(10, 6, "fixed") == [(0, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7)]
    assert spp_bins(10, 6, "appendix") == [(0, 2), (1, 4), (3, 5), (5, 7), (6, 9), (8, 10)]
    covered = {c for a, b in spp_bins(10, 6, "fixed") for c in range(a, b)}
    assert covered == set(range(7))


@pytest.mark.parametrize("a", [1, 2, 3, 5, 7, 10, 13, 43, 57])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 6])
def test_appendix_bins_cover_every_cell_and_are_never_empty(a, n):
    bins = spp_bins(a, n)
    assert len(bins) == n
    assert all(0 <= s < e <= a for s, e in bins)
    assert {c for s, e in bins for c in range(s, e)} == set(range(a))
    assert bins[0][0] == 0 and bins[-1][1] == a


def test_map_smaller_than_the_level():
    assert spp_bins(1, 6) == [(0, 1)] * 6
    assert spp_bins(2, 6) == [(0, 1)] * 3 + [(1, 2)] * 3
    with pytest.raises(ValueError, match="map size 5 < level 6"):
        spp_bins(5, 6, "fixed")


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="0"):
        spp_bins(0, 6)
    with pytest.raises(ValueError, match="'diagonal'"):
        spp_bins(13, 6, "diagonal")


def test_output_length():
    assert spp_output_length((6, 3, 2, 1), 256) == 12800
    assert spp_output_length((4, 3, 2, 1), 256) == 7680


def test_derivation_uses_only_exact_unions():
    # appendix form: 3 and 2 tile from 6, 1 from 2 (the coarsest exact source)
    assert derivation_sources((6, 3, 2, 1), [1, 2, 5, 10, 13, 57]) == [-1, 0, 0, 2]
    assert derivation_sources((4, 3, 2, 1), [7, 13]) == [-1, -1, 0, 2]
    # fixed form at a = 10: level 3 (win 4, stride 3) is not a union of level-6 bins
    src = derivation_sources((6, 3, 2, 1), [10], "fixed")
    assert src[1] == -1


def test_pyramid_bins_are_offset_by_the_window():
    ys, ye, xs, xe = pyramid_bins(np.array([[3, 5, 5, 5]]), (2, 1))
    # width 3 -> [0,2), [1,3); height 1 -> [0,1) twice; plus the window origin
    assert xs.tolist() == [[3, 4, 3]] and xe.tolist() == [[5, 6, 6]]
    assert ys.tolist() == [[5, 5, 5]] and ye.tolist() == [[6, 6, 6]]


def test_window_projection_hand_computed():
    # S = 16: left floor(x/16)+1, right ceil(x/16)-1
    cells = window_to_feature_map([[0, 0, 223, 223], [40, 33, 200, 100]], 16, (14, 14))
    assert cells.tolist() == [[1, 1, 13, 13], [3, 3, 12, 6]]


def test_window_projection_with_offset():
    cells = window_to_feature_map([[40, 33, 200, 100]], 16, (20, 20), offset=8)
    # x - 8: 32 -> floor(2)+1 = 3; 25 -> floor(1.56)+1 = 2; 192 -> ceil(12)-1 = 11; 92 -> 5
    assert cells.tolist() == [[3, 2, 11, 5]]


def test_small_window_projects_to_one_cell_not_nothing():
    cells = window_to_feature_map([[50, 50, 60, 58]], 16, (10, 10))
    x1, y1, x2, y2 = cells[0]
    assert x1 == x2 and y1 == y2 == x1 == 3  # centre 55/16 = 3.4 -> cell 3


def test_projection_clips_to_the_map_and_rejects_windows_beyond_it():
    assert window_to_feature_map([[0, 0, 1000, 1000]], 16, (5, 6)).tolist() == [[1, 1, 5, 4]]
    with pytest.raises(ValueError, match="window 1 .* outside the feature map"):
        window_to_feature_map([[0, 0, 50, 50], [500, 500, 600, 600]], 16, (5, 6))
    with pytest.raises(ValueError, match="window 0 .* x2 < x1"):
        window_to_feature_map([[60, 0, 50, 50]], 16, (5, 6))


def test_cell_windows_are_validated():
    with pytest.raises(ValueError, match=r"window 1 \(4, 0, 2, 3\) has x2 < x1"):
        check_cell_windows([[0, 0, 1, 1], [4, 0, 2, 3]], (5, 5))
    with pytest.raises(ValueError, match=r"window 0 \(0, 0, 5, 1\) lies outside"):
        check_cell_windows([[0, 0, 5, 1]], (5, 5))
    with pytest.raises(ValueError, match="shape"):
        check_cell_windows([[0, 0, 1]], (5, 5))
    with pytest.raises(ValueError, match="not finite"):
        check_cell_windows([[0, 0, np.nan, 1]], (5, 5))


def test_geometry_command_prints_the_truth_table():
    out = subprocess.run([sys.executable, "-m", "minispp.geometry", "10", "6"],
                         capture_output=True, text=True, check=True).stdout
    assert "[5, 7)" in out and "differs" in out
    assert "never pooled: [7, 8, 9]" in out


def test_receptive_field_by_hand():
    from minispp.geometry import receptive_field
    # Appendix padding floor(k/2) on odd kernels: centres at S x', no offset
    assert receptive_field([(3, 1, 1), (3, 2, 1), (5, 2, 2)]) == (4, 0.0, 1 + 2 * 1 + 2 * 1 + 4 * 2)
    # ZF-5: conv1 7/2 pad 1, pool 3/2, conv2 5/2 pad 1, pool 3/2, conv3-5 3/1 pad 1
    zf5 = [(7, 2, 1), (3, 2, 0), (5, 2, 1), (3, 2, 0), (3, 1, 1), (3, 1, 1), (3, 1, 1)]
    assert receptive_field(zf5) == (16, 16.0, 139)


def test_zf5_conv5_cells_see_the_pixels_the_geometry_says():
    """An impulse at one pixel, through ZF-5's conv layers with positive weights and no
    bias, changes exactly the conv5 cells whose receptive field (centre offset + S x',
    139 pixels wide) contains it."""
    import nets
    model = nets.build("zf5", num_classes=10, dtype=np.float64)
    for p in model.params.values():
        p.value[...] = np.abs(p.value) if p.name.endswith(".W") else 0.0
    S, offset, size = model.feature_geometry()
    H = W = 320
    trunk = model.trunk((H, W))
    half = (size - 1) // 2
    for py, px in ((150, 161), (170, 176), (160, 160)):
        x = np.zeros((1, 3, H, W))
        x[0, :, py, px] = 1000.0
        hit = trunk.forward(x)[0].max(axis=0) > 0
        rows, cols = np.nonzero(hit.any(axis=1))[0], np.nonzero(hit.any(axis=0))[0]
        expect = lambda p, n: [c for c in range(n) if abs(p - (offset + S * c)) <= half]
        assert rows.tolist() == expect(py, hit.shape[0])
        assert cols.tolist() == expect(px, hit.shape[1])


def test_small_window_past_the_last_cell_centre_gets_the_last_cell():
    # map 5x6 at stride 16: the last column's centre is pixel 80, the image goes on to ~95
    cells = window_to_feature_map([[86, 60, 89, 63]], 16, (5, 6))
    assert cells.tolist() == [[5, 4, 5, 4]]
    cells = window_to_feature_map([[86, 60, 89, 63]], 16, (5, 6), offset=16.0)
    assert cells.tolist() == [[4, 3, 4, 3]]
