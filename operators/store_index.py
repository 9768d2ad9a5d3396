"""Which stores a point is inside: precomputed H3 cells, then an exact great-circle check.

Built once per stores file per process (`store_index_for`). Every store's
disc (its radius, at most 1 km) is covered by H3 cells at resolution 9:
a flood fill from the store's own cell over neighbouring cells that *can*
touch the disc, i.e. whose centre is within radius + the cell's
circumradius (its farthest vertex) of the store. That test is a necessary
condition for a cell to meet the disc (triangle inequality), and the cells
that really meet a disc form a connected set around the store's cell, so
the fill misses no cell a point within the radius can fall in: no store is
missed at its radius edge, whatever the radius, latitude or cell shape
(pentagons and class III cells included). The map is a superset; the exact
haversine check then decides.

Why resolution 9 and a precomputed map (docs/design.md#h3-store-lookup): a lookup is
one `latlng_to_cell` (0.5 µs with the int API), one dict get and a distance
per candidate, 2.3 µs a ping against 17 µs when computing `grid_disk` per
ping. At 1 km a fixed ring would need k=5 to be guaranteed by geometry; the
flood fill computes, per store, exactly the cells that can touch its disc
(a 1 km disc is about 40 to 60 cells), so the map holds no dead ring.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from threading import Lock

import h3.api.basic_int as h3

from omnitrigger.io.stores import Store, load_stores

RESOLUTION = 9
#: Mean Earth radius (IUGG), metres: the sphere every distance in the visit definition is measured on.
EARTH_RADIUS_M = 6_371_008.8
_MARGIN_M = 1.0  # slack on the cell test, far above float error; it only ever adds candidate cells


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres (haversine on the mean-radius sphere)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def _unit_vector(lat: float, lon: float) -> tuple[float, float, float]:
    phi, lam = math.radians(lat), math.radians(lon)
    cos_phi = math.cos(phi)
    return cos_phi * math.cos(lam), cos_phi * math.sin(lam), math.sin(phi)


class StoreIndex:
    def __init__(self, stores: list[Store], resolution: int = RESOLUTION) -> None:
        self.stores = list(stores)
        self.resolution = resolution
        # Unit vectors and squared chord thresholds: great-circle distance is monotone in the chord, so
        # "distance <= radius" is exactly "chord^2 <= (2 sin(radius / 2R))^2", three products a candidate.
        self._candidates = [(store.store_id, *_unit_vector(store.lat, store.lon),
                             (2 * math.sin(store.radius_m / (2 * EARTH_RADIUS_M))) ** 2) for store in self.stores]
        cells: dict[int, list[int]] = {}
        centres: dict[int, tuple[float, float]] = {}
        circumradius: dict[int, float] = {}

        def centre(cell: int) -> tuple[float, float]:
            found = centres.get(cell)
            if found is None:
                found = centres[cell] = h3.cell_to_latlng(cell)
            return found

        def reach(cell: int) -> float:
            found = circumradius.get(cell)
            if found is None:
                lat, lon = centre(cell)
                found = circumradius[cell] = max(haversine_m(lat, lon, vlat, vlon)
                                                 for vlat, vlon in h3.cell_to_boundary(cell))
            return found

        for number, store in enumerate(self.stores):
            start = h3.latlng_to_cell(store.lat, store.lon, resolution)
            seen = {start}
            frontier = [start]
            while frontier:
                cell = frontier.pop()
                cells.setdefault(cell, []).append(number)
                for neighbour in h3.grid_disk(cell, 1):
                    if neighbour in seen:
                        continue
                    seen.add(neighbour)
                    lat, lon = centre(neighbour)
                    distance = haversine_m(store.lat, store.lon, lat, lon)
                    if distance <= store.radius_m or distance <= store.radius_m + reach(neighbour) + _MARGIN_M:
                        frontier.append(neighbour)
        # One shared tuple per distinct candidate set: most cells of a store's disc hold the same set.
        shared: dict[tuple[int, ...], tuple] = {}
        self._cells: dict[int, tuple] = {}
        for cell, numbers in cells.items():
            key = tuple(sorted(numbers))
            entry = shared.get(key)
            if entry is None:
                entry = shared[key] = tuple(self._candidates[number] for number in key)
            self._cells[cell] = entry

    @property
    def cell_count(self) -> int:
        return len(self._cells)

    def stores_near(self, lat: float, lon: float) -> list[tuple[str, float]]:
        """(store_id, distance in metres) of every store whose radius contains the point, nearest first.

        Inside means distance <= radius. Ties in distance are ordered by store_id.
        """
        candidates = self._cells.get(h3.latlng_to_cell(lat, lon, self.resolution))
        if not candidates:
            return []
        x, y, z = _unit_vector(lat, lon)
        found: list[tuple[str, float]] = []
        for store_id, sx, sy, sz, limit in candidates:
            chord2 = (sx - x) ** 2 + (sy - y) ** 2 + (sz - z) ** 2
            if chord2 <= limit:
                found.append((store_id, 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(chord2) / 2))))
        if len(found) > 1:
            found.sort(key=lambda item: (item[1], item[0]))
        return found


_CACHE: dict[tuple[str, int, int], StoreIndex] = {}
_CACHE_LOCK = Lock()


def store_index_for(path: str | os.PathLike) -> StoreIndex:
    """The index of a stores file, built once per process (per path, size and modification time)."""
    resolved = Path(path).resolve()
    status = resolved.stat()
    key = (str(resolved), status.st_size, status.st_mtime_ns)
    with _CACHE_LOCK:
        index = _CACHE.get(key)
        if index is None:
            index = _CACHE[key] = StoreIndex(load_stores(resolved))
        return index
