"""``arrayapi.lu_layout``: the controller's LU listing in the form ``DiskArray.status.lus`` keeps."""

from __future__ import annotations

from nasblade_operator import arrayapi


def run(device: int, offset: int, length: int, segment: int) -> dict[str, int]:
    return {"device": device, "offset": offset, "length": length, "segment": segment}


def test_touching_runs_of_a_device_merge_and_the_rest_stay_apart() -> None:
    listed = [
        {"name": "fs-b", "size": 300, "extents": [
            run(0, 100, 50, 0), run(1, 100, 50, 0),      # segment 0 striped over two devices
            run(0, 150, 50, 1), run(1, 150, 50, 1),      # grown in place: touches segment 0
            run(0, 400, 50, 2), run(1, 400, 50, 2)]},    # grown after another LU: a gap
        {"name": "fs-a", "size": 100, "extents": [run(1, 0, 100, 0)]},
        {"name": "empty", "size": 0, "extents": []},
    ]
    assert arrayapi.lu_layout(listed) == [
        {"name": "empty", "size": 0, "extents": []},
        {"name": "fs-a", "size": 100, "extents": [{"device": 1, "offset": 0, "length": 100}]},
        {"name": "fs-b", "size": 300, "extents": [
            {"device": 0, "offset": 100, "length": 100}, {"device": 0, "offset": 400, "length": 50},
            {"device": 1, "offset": 100, "length": 100}, {"device": 1, "offset": 400, "length": 50}]},
    ]
