"""The visit summary: one Parquet table per visit, one row per detector.

Rubin's ``visitSummary`` / ``finalVisitSummary`` (``preliminary_visit_summary``
and ``visit_summary`` in drp) is an ExposureCatalog holding, for every detector,
the summary statistics and the calibration *components* (PSF, WCS,
PhotoCalib, aperture corrections, visit info).  drp stores it as a plain
Parquet table so downstream tasks (warping, coadd input selection, the
``CcdVisit`` SQL table) need nothing else:

* identifiers and geometry: ``visit``, ``detector``, ``instrument``, ``band``,
  ``physical_filter``, ``detector_name``, the image box ``x0, y0, width,
  height`` (pixels);
* the visit info: ``expMidptMJD``, ``obsStartMJD``, ``darkTime``,
  ``boresightRa/Dec``, ``boresightRotAngle``, ``boresightAirmass``,
  ``boresightAz/Alt``, ``dayObs``, ``observatoryLongitude/Latitude/Elevation``
  (the exposure time is the summary column ``expTime``);
* every :class:`~processing.algorithms.summary_stats.ExposureSummaryStats`
  field under its Rubin name (``raCorners`` / ``decCorners`` as 4-element
  lists);
* the components: ``wcs`` (FITS header text of the TAN-SIP WCS, in parent
  pixel coordinates, newline-separated cards), ``psf`` (FITS file bytes
  holding ``psf.to_hdu()``), ``ap_corr_map`` (FITS bytes of
  ``ApCorrMap.to_hdu()``), ``calibration_mean`` / ``calibration_err``
  (PhotoCalib, nJy/ADU), ``gain`` (e-/ADU), ``read_noise`` (e-),
  ``saturation`` (ADU).  A missing component is null.

Units are in the Parquet field metadata; the table metadata carries
``drp_format = visit_summary/1``.  :class:`VisitSummaryCatalog` wraps the table
(immutable: updates return a new catalog).
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from processing.algorithms.summary_fields import (
    SUMMARY_FIELDS,
    ExposureSummaryStats,
    summary_descriptions,
    summary_units,
)
from store.calib import ApCorrMap, PhotoCalib
from store.exposure import DetectorInfo, Exposure, VisitInfo
from store.formats.parquet import as_arrow, with_units
from store.geom import Box
from store.psf import Psf, psf_from_hdu

__all__ = ["FORMAT", "DetectorSummary", "VisitSummaryCatalog"]

#: Value of the ``drp_format`` table metadata.
FORMAT = "visit_summary/1"

_NAN = float("nan")
_CORNERS = ("raCorners", "decCorners")

# Visit-info column -> (VisitInfo attribute, arrow type, unit).
_VISIT_COLUMNS: dict[str, tuple[str, pa.DataType, str]] = {
    "expMidptMJD": ("mjd", pa.float64(), "d"),
    "obsStartMJD": ("mjd_begin", pa.float64(), "d"),
    "darkTime": ("dark_time", pa.float64(), "s"),
    "boresightRa": ("boresight_ra", pa.float64(), "deg"),
    "boresightDec": ("boresight_dec", pa.float64(), "deg"),
    "boresightRotAngle": ("rotation_angle", pa.float64(), "deg"),
    "boresightAirmass": ("airmass", pa.float64(), ""),
    "boresightAz": ("azimuth", pa.float64(), "deg"),
    "boresightAlt": ("altitude", pa.float64(), "deg"),
    "dayObs": ("day_obs", pa.int64(), ""),
}
_OBSERVATORY = (("observatoryLongitude", "deg"), ("observatoryLatitude", "deg"),
                ("observatoryElevation", "m"))

_ID_COLUMNS: dict[str, pa.DataType] = {
    "visit": pa.int64(), "detector": pa.int64(), "instrument": pa.string(),
    "band": pa.string(), "physical_filter": pa.string(), "detector_name": pa.string(),
    "x0": pa.int64(), "y0": pa.int64(), "width": pa.int64(), "height": pa.int64(),
}
_COMPONENT_COLUMNS: dict[str, tuple[pa.DataType, str]] = {
    "wcs": (pa.string(), ""), "psf": (pa.binary(), ""), "ap_corr_map": (pa.binary(), ""),
    "calibration_mean": (pa.float64(), "nJy/adu"), "calibration_err": (pa.float64(), "nJy/adu"),
    "gain": (pa.float64(), "electron/adu"), "read_noise": (pa.float64(), "electron"),
    "saturation": (pa.float64(), "adu"),
}


def _summary_type(name: str) -> pa.DataType:
    if name in _CORNERS:
        return pa.list_(pa.float64(), 4)
    if name in ("version", "nPsfStar"):
        return pa.int32()
    return pa.float64()


def _schema() -> pa.Schema:
    cols = [pa.field(n, t) for n, t in _ID_COLUMNS.items()]
    cols += [pa.field(n, t) for n, (_, t, _) in _VISIT_COLUMNS.items()]
    cols += [pa.field(n, pa.float64()) for n, _ in _OBSERVATORY]
    cols += [pa.field(n, _summary_type(n)) for n in SUMMARY_FIELDS]
    cols += [pa.field(n, t) for n, (t, _) in _COMPONENT_COLUMNS.items()]
    return pa.schema(cols, metadata={b"drp_format": FORMAT.encode()})


def _units() -> dict[str, str]:
    units = {"x0": "pixel", "y0": "pixel", "width": "pixel", "height": "pixel"}
    units.update({n: u for n, (_, _, u) in _VISIT_COLUMNS.items() if u})
    units.update(dict(_OBSERVATORY))
    units.update(summary_units())
    units.update({n: u for n, (_, u) in _COMPONENT_COLUMNS.items() if u})
    return units


_DESCRIPTIONS = {
    **summary_descriptions(),
    "wcs": "FITS header of the TAN-SIP WCS (parent pixel coordinates)",
    "psf": "FITS file bytes of the PSF model HDU",
    "ap_corr_map": "FITS file bytes of the aperture-correction map HDU",
    "calibration_mean": "photometric calibration, nJy per ADU",
}


# ------------------------------------------------------------------------- component codecs


def _hdu_bytes(hdu) -> bytes:
    from astropy.io import fits

    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buf, output_verify="silentfix")
    return buf.getvalue()


def _open_hdu(data: bytes, name: str):
    from astropy.io import fits

    hdul = fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=False)
    return hdul, hdul[name]


def _psf_from_bytes(data: bytes) -> Psf:
    hdul, hdu = _open_hdu(data, "PSF")
    with hdul:
        return psf_from_hdu(hdu)


def _ap_corr_from_bytes(data: bytes) -> ApCorrMap:
    hdul, hdu = _open_hdu(data, "APCORR")
    with hdul:
        return ApCorrMap.from_hdu(hdu)


def _wcs_to_text(wcs) -> str:
    return wcs.to_header(relax=True).tostring(sep="\n", endcard=False, padding=False)


def _wcs_from_text(text: str):
    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(fits.Header.fromstring(text, sep="\n"), relax=True)


# ------------------------------------------------------------------------------- the rows


@dataclass
class DetectorSummary:
    """Everything the visit summary records about one detector.

    Attributes
    ----------
    detector : store.exposure.DetectorInfo
        Identity and electronics (gain e-/ADU, read noise e-, saturation ADU).
    bbox : store.geom.Box
        Pixel box of the detector image.
    summary : ExposureSummaryStats
        The summary statistics.
    visit_info : store.exposure.VisitInfo, optional
        What the telescope did (visit id, band, times, boresight).
    wcs, psf, photo_calib, ap_corr_map : optional
        The calibration components (None when absent).
    """

    detector: DetectorInfo
    bbox: Box
    summary: ExposureSummaryStats = field(default_factory=ExposureSummaryStats)
    visit_info: VisitInfo | None = None
    wcs: Any = None
    psf: Psf | None = None
    photo_calib: PhotoCalib | None = None
    ap_corr_map: ApCorrMap | None = None

    @classmethod
    def from_exposure(cls, exposure: Exposure, summary: ExposureSummaryStats
                      ) -> DetectorSummary:
        """The components of an exposure (pixels are not used) with its summary."""
        if exposure.detector is None:
            raise ValueError(f"exposure {exposure!r} has no detector info")
        return cls(detector=exposure.detector, bbox=exposure.bbox, summary=summary,
                   visit_info=exposure.visit_info, wcs=exposure.wcs, psf=exposure.psf,
                   photo_calib=exposure.photo_calib, ap_corr_map=exposure.ap_corr_map)

    def to_row(self) -> dict[str, Any]:
        """The table row (column name -> Python value; components serialised)."""
        vi = self.visit_info or VisitInfo()
        det = self.detector
        row: dict[str, Any] = {
            "visit": vi.visit, "detector": det.id, "instrument": vi.instrument,
            "band": vi.band, "physical_filter": vi.physical_filter,
            "detector_name": det.name or None,
            "x0": self.bbox.x0, "y0": self.bbox.y0, "width": self.bbox.width,
            "height": self.bbox.height,
        }
        for col, (attr, _, _) in _VISIT_COLUMNS.items():
            row[col] = getattr(vi, attr)
        for (col, _), value in zip(_OBSERVATORY, vi.observatory, strict=True):
            row[col] = float(value)
        summary = self.summary.to_dict()
        if math.isnan(summary["expTime"]):
            summary["expTime"] = float(vi.exposure_time)
        row.update(summary)
        pc = self.photo_calib
        row.update({
            "wcs": None if self.wcs is None else _wcs_to_text(self.wcs),
            "psf": None if self.psf is None else _hdu_bytes(self.psf.to_hdu()),
            "ap_corr_map": None if self.ap_corr_map is None
            else _hdu_bytes(self.ap_corr_map.to_hdu()),
            "calibration_mean": None if pc is None else pc.calibration_mean,
            "calibration_err": None if pc is None else pc.calibration_err,
            "gain": det.gain, "read_noise": det.read_noise, "saturation": det.saturation,
        })
        return row


_KEEP = object()


class VisitSummaryCatalog:
    """One visit's summary table, with typed access to each detector's components.

    Parameters
    ----------
    table : pyarrow.Table
        Rows as written by :meth:`to_table`; see :meth:`from_table`.

    Examples
    --------
    >>> entry = DetectorSummary(DetectorInfo(3, gain=1.5), Box(0, 0, 10, 10),
    ...                         visit_info=VisitInfo(visit=7, band="r"))
    >>> cat = VisitSummaryCatalog.from_detectors([entry])
    >>> cat.visit, cat.detectors(), cat.photo_calib(3) is None
    (7, [3], True)
    """

    def __init__(self, table: pa.Table):
        schema = _schema()
        missing = [n for n in schema.names if n not in table.column_names]
        if missing:
            raise ValueError(f"not a visit summary: missing columns {missing[:5]}")
        detectors = table.column("detector").to_pylist()
        if len(set(detectors)) != len(detectors):
            raise ValueError(f"duplicate detector rows in visit summary: {sorted(detectors)}")
        visits = set(table.column("visit").to_pylist())
        if len(visits) > 1:
            raise ValueError(f"a visit summary holds one visit, got {sorted(visits, key=str)}")
        order = np.argsort(np.asarray(detectors, dtype=np.int64), kind="stable")
        self._table = table.take(pa.array(order)) if len(order) else table
        self._index = {int(d): i for i, d in
                       enumerate(self._table.column("detector").to_pylist())}

    def __repr__(self) -> str:
        return f"VisitSummaryCatalog(visit={self.visit}, detectors={len(self)})"

    def __len__(self) -> int:
        return self._table.num_rows

    def __contains__(self, detector: int) -> bool:
        return int(detector) in self._index

    # ---------------------------------------------------------------- construction / I/O

    @classmethod
    def from_table(cls, table: Any) -> VisitSummaryCatalog:
        """Wrap a table read from Parquet (pyarrow, polars, ...); columns are cast to the schema."""
        table = as_arrow(table)
        schema = _schema()
        missing = [n for n in schema.names if n not in table.column_names]
        if missing:
            raise ValueError(f"not a visit summary: missing columns {missing[:5]}")
        table = table.select(schema.names).cast(
            pa.schema([pa.field(f.name, f.type) for f in schema], metadata=schema.metadata))
        return cls(with_units(table, _units(), _DESCRIPTIONS))

    @classmethod
    def from_detectors(cls, entries: Iterable[DetectorSummary]) -> VisitSummaryCatalog:
        """Build from per-detector entries (all of one visit)."""
        rows = [e.to_row() for e in entries]
        schema = _schema()
        table = pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()
        return cls(with_units(table, _units(), _DESCRIPTIONS))

    @classmethod
    def from_exposures(cls, exposures: Sequence[Exposure],
                       summaries: Sequence[ExposureSummaryStats]) -> VisitSummaryCatalog:
        """Build from exposures (their components) and their summaries, in the same order."""
        if len(exposures) != len(summaries):
            raise ValueError(f"got {len(exposures)} exposures but {len(summaries)} summaries")
        return cls.from_detectors(DetectorSummary.from_exposure(e, s)
                                  for e, s in zip(exposures, summaries, strict=True))

    def to_table(self) -> pa.Table:
        """The Parquet-ready table (sorted by detector, units in the field metadata)."""
        return self._table

    # ------------------------------------------------------------------------- access

    @property
    def visit(self) -> int | None:
        """The visit id (None for an empty catalog)."""
        return self._table.column("visit")[0].as_py() if len(self) else None

    def detectors(self) -> list[int]:
        """Detector ids, sorted."""
        return list(self._index)

    def _i(self, detector: int) -> int:
        try:
            return self._index[int(detector)]
        except KeyError:
            raise KeyError(f"detector {detector} not in the summary of visit {self.visit}; "
                           f"have {self.detectors()}") from None

    def _value(self, detector: int, column: str):
        return self._table.column(column)[self._i(detector)].as_py()

    def row(self, detector: int) -> dict[str, Any]:
        """The whole row of a detector (components still serialised)."""
        return self._table.slice(self._i(detector), 1).to_pylist()[0]

    def summary(self, detector: int) -> ExposureSummaryStats:
        """The summary statistics of a detector (nulls read as NaN)."""
        i = self._i(detector)
        return ExposureSummaryStats.from_dict(
            {n: self._table.column(n)[i].as_py() for n in SUMMARY_FIELDS})

    def psf(self, detector: int) -> Psf | None:
        """The PSF model, or None."""
        data = self._value(detector, "psf")
        return None if data is None else _psf_from_bytes(data)

    def wcs(self, detector: int):
        """The astropy WCS (parent pixel coordinates, 0-based calls), or None."""
        text = self._value(detector, "wcs")
        return None if text is None else _wcs_from_text(text)

    def photo_calib(self, detector: int) -> PhotoCalib | None:
        """The photometric calibration, or None."""
        mean = self._value(detector, "calibration_mean")
        if mean is None or not math.isfinite(mean):
            return None
        err = self._value(detector, "calibration_err")
        return PhotoCalib(mean, 0.0 if err is None else err)

    def ap_corr_map(self, detector: int) -> ApCorrMap | None:
        """The aperture-correction map, or None."""
        data = self._value(detector, "ap_corr_map")
        return None if data is None else _ap_corr_from_bytes(data)

    def bbox(self, detector: int) -> Box:
        """The detector image's pixel box."""
        r = self.row(detector)
        return Box(r["x0"], r["y0"], r["width"], r["height"])

    def visit_info(self, detector: int) -> VisitInfo:
        """The visit info recorded with a detector."""
        r = self.row(detector)
        kwargs = {attr: r[col] for col, (attr, _, _) in _VISIT_COLUMNS.items()
                  if r[col] is not None}
        return VisitInfo(
            visit=r["visit"], instrument=r["instrument"], band=r["band"],
            physical_filter=r["physical_filter"], exposure_time=_nan_if_none(r["expTime"]),
            observatory=tuple(_nan_if_none(r[c]) for c, _ in _OBSERVATORY), **kwargs)

    def detector_info(self, detector: int) -> DetectorInfo:
        """Identity and electronics of a detector (its bbox is the image box)."""
        r = self.row(detector)
        return DetectorInfo(id=r["detector"], name=r["detector_name"] or "",
                            bbox=Box(r["x0"], r["y0"], r["width"], r["height"]),
                            gain=_nan_if_none(r["gain"]), read_noise=_nan_if_none(r["read_noise"]),
                            saturation=_nan_if_none(r["saturation"]))

    def entry(self, detector: int) -> DetectorSummary:
        """Everything about a detector, deserialised."""
        return DetectorSummary(
            detector=self.detector_info(detector), bbox=self.bbox(detector),
            summary=self.summary(detector), visit_info=self.visit_info(detector),
            wcs=self.wcs(detector), psf=self.psf(detector),
            photo_calib=self.photo_calib(detector), ap_corr_map=self.ap_corr_map(detector))

    # ------------------------------------------------------------------------ updates

    def with_components(self, detector: int, *, psf: Any = _KEEP, wcs: Any = _KEEP,
                        photo_calib: Any = _KEEP, ap_corr_map: Any = _KEEP,
                        summary: Any = _KEEP) -> VisitSummaryCatalog:
        """A new catalog with some components (or the summary) of one detector replaced.

        Pass ``None`` to remove a component; omitted ones are kept.
        """
        given = {"psf": psf, "wcs": wcs, "photo_calib": photo_calib,
                 "ap_corr_map": ap_corr_map, "summary": summary}
        return self.with_updates({detector: {k: v for k, v in given.items() if v is not _KEEP}})

    def with_updates(self, updates: Mapping[int, Mapping[str, Any]]) -> VisitSummaryCatalog:
        """Batch :meth:`with_components`: ``{detector: {"psf": ..., "summary": ...}}``."""
        allowed = {"psf", "wcs", "photo_calib", "ap_corr_map", "summary"}
        new_values: dict[str, dict[int, Any]] = {}
        for detector, changes in updates.items():
            i = self._i(detector)
            bad = set(changes) - allowed
            if bad:
                raise ValueError(f"unknown components {sorted(bad)}; allowed: {sorted(allowed)}")
            for name, value in changes.items():
                for col, v in _serialise(name, value).items():
                    new_values.setdefault(col, {})[i] = v
        table = self._table
        for col, by_row in new_values.items():
            values = table.column(col).to_pylist()
            for i, v in by_row.items():
                values[i] = v
            pos = table.schema.get_field_index(col)
            table = table.set_column(pos, table.schema.field(col),
                                     pa.array(values, type=table.schema.field(col).type))
        return VisitSummaryCatalog(table)


def _nan_if_none(value) -> float:
    return _NAN if value is None else float(value)


def _serialise(name: str, value: Any) -> dict[str, Any]:
    """Column values of one component (None removes it)."""
    if name == "summary":
        if not isinstance(value, ExposureSummaryStats):
            raise TypeError(f"summary must be an ExposureSummaryStats, got {type(value).__name__}")
        return value.to_dict()
    if name == "photo_calib":
        return {"calibration_mean": None if value is None else value.calibration_mean,
                "calibration_err": None if value is None else value.calibration_err}
    if value is None:
        return {name: None}
    if name == "wcs":
        return {"wcs": _wcs_to_text(value)}
    return {name: _hdu_bytes(value.to_hdu())}
