"""Linear fits of TAN and TAN-SIP WCSs to matched (pixel, sky) pairs.

Method.  Writing ``(u, v)`` for pixel offsets from CRPIX and ``(xi, eta)`` for the gnomonic
(intermediate world) coordinates of the reference stars about CRVAL, a TAN-SIP WCS is
``(xi, eta) = CD (u + A(u, v), v + B(u, v))``.  Both fits here are *linear* in their parameters:

* :func:`fit_tan_sip_detailed` fits the whole polynomial of total order ``sip_order`` from
  scratch: one least-squares solve per axis for all monomials; ``CD`` is the linear part and the
  SIP coefficients are ``CD^-1`` times the higher-order parts.
* :func:`fit_camera_wcs` keeps the distortion ``(A, B)`` and CRPIX of a camera-model WCS (the
  header WCS) and fits only CRVAL and CD, i.e. an affine transform between the camera's focal
  plane and the sky (6 parameters; Rubin's ``FitAffineWcsTask`` does the same), optionally plus
  a SIP correction ``CD^-1 Q(u, v)`` of order 2..5 added to the camera's ``(A, B)``.  The
  columns of the solve are ``1, u + A, v + B`` and the monomials of ``Q``.

A fitted constant term means the tangent point is off; CRVAL is moved there and the projection
redone (2-3 passes reach 1e-10 deg).  Outliers are rejected at ``n_sigma`` times a MAD-based
sigma per axis and the fit repeated.  Every fit also gives the exact leave-one-out residual of
each pair (``r / (1 - h)``, ``h`` the leverage of the weighted design), so models can be compared
on held-out residuals without refitting.  The inverse polynomials AP/BP (needed by FITS readers
such as DS9, and used by astropy's ``sip_foc2pix``; astropy's ``all_world2pix`` itself iterates
on the forward polynomials and is exact regardless) are fitted on a 48x48 grid over the
detector, two orders higher than the forward ones, and their worst error on that grid is
reported; an affine fit on a camera model keeps the camera's AP/BP (the distortion is unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS, Sip

from store.geom import Box

__all__ = [
    "TanSipFit",
    "camera_distortion",
    "fit_camera_wcs",
    "fit_tan_sip",
    "fit_tan_sip_detailed",
]

_MAD_TO_SIGMA = 1.4826


def _unit_vectors(ra0: float, dec0: float):
    """Tangent-plane basis at (ra0, dec0): radial, east and north unit vectors."""
    a, d = np.radians(ra0), np.radians(dec0)
    er = np.array([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)])
    ee = np.array([-np.sin(a), np.cos(a), 0.0])
    en = np.array([-np.sin(d) * np.cos(a), -np.sin(d) * np.sin(a), np.cos(d)])
    return er, ee, en


def _radec_to_vec(ra, dec) -> np.ndarray:
    a, d = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)], axis=-1)


def _gnomonic(ra, dec, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic projection about (ra0, dec0): (xi, eta) in degrees, xi towards +RA."""
    er, ee, en = _unit_vectors(ra0, dec0)
    p = _radec_to_vec(ra, dec)
    z = p @ er
    return np.degrees(p @ ee / z), np.degrees(p @ en / z)


def _inverse_gnomonic(xi, eta, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`_gnomonic`: (ra, dec) in degrees."""
    er, ee, en = _unit_vectors(ra0, dec0)
    p = er + np.radians(xi)[..., None] * ee + np.radians(eta)[..., None] * en
    p /= np.linalg.norm(p, axis=-1, keepdims=True)
    return np.degrees(np.arctan2(p[..., 1], p[..., 0])) % 360.0, np.degrees(np.arcsin(p[..., 2]))


def _angular_sep_arcsec(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Great-circle separation, arcsec (stable for tiny angles)."""
    p, q = _radec_to_vec(ra1, dec1), _radec_to_vec(ra2, dec2)
    return np.degrees(2.0 * np.arcsin(0.5 * np.linalg.norm(p - q, axis=-1))) * 3600.0


def _terms(order: int, min_total: int = 0) -> list[tuple[int, int]]:
    return [(p, n - p) for n in range(min_total, order + 1) for p in range(n, -1, -1)]


def _design(u, v, terms, norm: float) -> np.ndarray:
    un, vn = u / norm, v / norm
    return np.stack([un**p * vn**q for p, q in terms], axis=-1)


def _poly_eval(coef: np.ndarray, u, v) -> np.ndarray:
    """Sum of ``coef[p, q] u^p v^q`` (a SIP coefficient array)."""
    out = np.zeros(np.shape(u))
    for p, q in zip(*np.nonzero(coef), strict=True):
        out = out + coef[p, q] * u**p * v**q
    return out


@dataclass(frozen=True)
class TanSipFit:
    """Result of :func:`fit_tan_sip_detailed` and :func:`fit_camera_wcs`.

    Attributes
    ----------
    wcs : astropy.wcs.WCS
        The fitted TAN (order 1) or TAN-SIP WCS, 0-based pixel convention.
    used : numpy.ndarray
        Bool mask of the input pairs kept by the sigma clipping, shape (n,).
    residual_arcsec : numpy.ndarray
        (xi, eta) residuals "model - reference" of every input pair, arcsec, shape (n, 2).
    rms_arcsec : float
        RMS on-sky residual (radial) of the used pairs, arcsec.
    sip_order : int
        Order of the SIP polynomials of ``wcs`` (1 = plain TAN).
    inverse_max_error_pix : float
        Worst round-trip error of the AP/BP inverse polynomials on the fitting grid, pixels
        (0 when the camera's own AP/BP were kept).
    held_out_arcsec : numpy.ndarray
        Leave-one-out residuals, arcsec, shape (n, 2): for a used pair the residual of the fit
        made without it (exact for the linear solve), for a clipped pair its plain residual;
        NaN where a pair alone fixes a parameter.
    n_params : int
        Free parameters per axis.
    model : str
        ``"tan-sip"`` (polynomial of order ``sip_order`` fitted from scratch), ``"affine"``
        (camera distortion kept, CRVAL and CD fitted) or ``"affine+sip<k>"`` (affine plus a
        fitted order-k SIP correction to the camera distortion).
    """

    wcs: WCS
    used: np.ndarray
    residual_arcsec: np.ndarray
    rms_arcsec: float
    sip_order: int
    inverse_max_error_pix: float
    held_out_arcsec: np.ndarray | None = None
    n_params: int = 0
    model: str = "tan-sip"

    def held_out_mean_square(self, pairs: np.ndarray, weights: np.ndarray | None = None) -> float:
        """Weighted mean square of the leave-one-out residuals over ``pairs``, arcsec^2.

        Parameters
        ----------
        pairs : numpy.ndarray
            Bool mask or indices of the pairs to average over.
        weights : numpy.ndarray, optional
            Relative weights of all the input pairs, shape (n,).
        """
        r = self.held_out_arcsec[pairs]
        w = np.ones(r.shape[0]) if weights is None else np.asarray(weights, float)[pairs]
        sq = np.sum(r**2, axis=1)
        ok = np.isfinite(sq)
        if not ok.any():
            return float("inf")
        return float(np.sum(w[ok] * sq[ok]) / np.sum(w[ok]))

    def __repr__(self) -> str:
        return (f"TanSipFit(model={self.model!r}, sip_order={self.sip_order}, n_used="
                f"{int(self.used.sum())}/{self.used.size}, rms={self.rms_arcsec * 1e3:.1f} mas, "
                f"inverse_err={self.inverse_max_error_pix:.1e} px)")


def _fit_inverse(a, b, order_inv, grid_u, grid_v, norm):
    """Fit AP, BP to the forward SIP arrays (a, b) on a grid; returns (ap, bp, max_error_pix)."""
    big_u = grid_u + _poly_eval(a, grid_u, grid_v)
    big_v = grid_v + _poly_eval(b, grid_u, grid_v)
    inv_terms = _terms(order_inv, 0)
    design = _design(big_u, big_v, inv_terms, norm)
    coef = np.linalg.lstsq(design, np.stack([grid_u - big_u, grid_v - big_v], axis=-1),
                           rcond=None)[0]
    coef = coef * np.array([norm ** -(p + q) for p, q in inv_terms])[:, None]
    pred = _design(big_u, big_v, inv_terms, 1.0) @ coef
    err = np.hypot(big_u + pred[:, 0] - grid_u, big_v + pred[:, 1] - grid_v)
    ap = np.zeros((order_inv + 1, order_inv + 1))
    bp = np.zeros_like(ap)
    for k, (p, q) in enumerate(inv_terms):
        ap[p, q], bp[p, q] = coef[k]
    return ap, bp, float(err.max())


def _leverage(a_w: np.ndarray) -> np.ndarray:
    """Diagonal of the hat matrix of a weighted design (n, m)."""
    scale = np.sqrt(np.sum(a_w**2, axis=0))
    q = np.linalg.qr(a_w / np.where(scale > 0, scale, 1.0))[0]
    return np.sum(q**2, axis=1)


@dataclass(frozen=True)
class _Distortion:
    """A camera model: CRPIX (0-based), forward SIP (a, b) and inverse (ap, bp), or none."""

    crpix: tuple[float, float]
    a: np.ndarray | None = None
    b: np.ndarray | None = None
    ap: np.ndarray | None = None
    bp: np.ndarray | None = None

    @property
    def order(self) -> int:
        return 1 if self.a is None else self.a.shape[0] - 1


def camera_distortion(wcs: WCS) -> tuple[np.ndarray, np.ndarray] | None:
    """The SIP distortion arrays (A, B) of a WCS, or None for a plain TAN WCS.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        A TAN or TAN-SIP WCS.

    Returns
    -------
    tuple of numpy.ndarray or None
        ``(A, B)``, each (order + 1, order + 1), pixel offsets from CRPIX; None without SIP or
        when every SIP coefficient is zero.
    """
    sip = wcs.sip
    if sip is None or (not np.any(sip.a) and not np.any(sip.b)):
        return None
    return np.array(sip.a, float), np.array(sip.b, float)


def _fit_poly_wcs(x, y, ra, dec, w, crval, base: _Distortion, order: int, *, n_sigma: float,
                  n_clip_iter: int, bbox: Box | None, inverse_order: int | None,
                  model: str) -> TanSipFit:
    """The common linear fit: columns ``1, u + A, v + B`` and monomials of order 2..``order``."""
    finite = np.isfinite(x) & np.isfinite(y) & np.isfinite(ra) & np.isfinite(dec) & (w > 0)
    crpix = base.crpix
    u, v = x - crpix[0], y - crpix[1]
    fu, fv = u.copy(), v.copy()
    if base.a is not None:
        fu += _poly_eval(base.a, u, v)
        fv += _poly_eval(base.b, u, v)
    hi_terms = _terms(order, 2)
    norm = max(float(np.max(np.hypot(u[finite], v[finite]))), 1.0)
    design = np.column_stack([np.ones(x.size), fu / norm, fv / norm,
                              *(_design(u, v, hi_terms, norm).T if hi_terms else [])])
    col_scale = np.concatenate([[1.0, 1.0 / norm, 1.0 / norm],
                                [norm ** -(p + q) for p, q in hi_terms]])
    n_par = design.shape[1]
    sw = np.sqrt(w / np.mean(w[finite]))
    ra0, dec0 = float(crval[0]), float(crval[1])
    used = finite.copy()

    def solve(xi, eta, sel):
        a_w = design[sel] * sw[sel, None]
        b_w = np.stack([xi[sel], eta[sel]], axis=-1) * sw[sel, None]
        return np.linalg.lstsq(a_w, b_w, rcond=None)[0]

    n_pass = max(n_clip_iter, 0) + 1
    for i_pass in range(n_pass):
        for _ in range(6):  # tangent-point refinement
            xi, eta = _gnomonic(ra, dec, ra0, dec0)
            coef = solve(xi, eta, used)
            shift = coef[0]
            ra0, dec0 = _inverse_gnomonic(shift[0], shift[1], ra0, dec0)
            ra0, dec0 = float(ra0), float(dec0)
            if np.hypot(*shift) < 1e-11:
                break
        xi, eta = _gnomonic(ra, dec, ra0, dec0)
        coef[0] = 0.0
        resid = (design @ coef - np.stack([xi, eta], axis=-1)) * 3600.0
        if i_pass == n_pass - 1:
            break  # the last fit stands: no clipping the fit has not seen
        z = resid * sw[:, None]
        zu = z[used]
        sigma = _MAD_TO_SIGMA * np.median(np.abs(zu - np.median(zu, axis=0)), axis=0)
        sigma = np.maximum(sigma, 1e-9)
        new_used = finite & np.all(np.abs(z - np.median(zu, axis=0)) <= n_sigma * sigma, axis=1)
        if new_used.sum() < n_par or np.array_equal(new_used, used):
            break
        used = new_used

    held_out = resid.copy()
    h = _leverage(design[used] * sw[used, None])
    with np.errstate(divide="ignore", invalid="ignore"):
        held_out[used] = np.where((h < 1.0 - 1e-9)[:, None], resid[used] / (1.0 - h)[:, None],
                                  np.nan)
    held_out[~finite] = np.nan

    coef = coef * col_scale[:, None]
    cd = coef[1:3].T                  # rows: xi, eta; columns: f_u, f_v
    sip_order = max(base.order, order)
    wcs = WCS(naxis=2)
    wcs.wcs.crpix = [crpix[0] + 1.0, crpix[1] + 1.0]
    wcs.wcs.crval = [ra0, dec0]
    wcs.wcs.cd = cd
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.radesys = "ICRS"
    inverse_err = 0.0
    if sip_order >= 2:
        wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
        a = np.zeros((sip_order + 1, sip_order + 1))
        b = np.zeros_like(a)
        if base.a is not None:
            n0 = base.a.shape[0]
            a[:n0, :n0], b[:n0, :n0] = base.a, base.b
        if hi_terms:
            delta = (np.linalg.inv(cd) @ coef[3:].T).T        # (n_hi, 2) pixels
            for k, (p, q) in enumerate(hi_terms):
                a[p, q] += delta[k, 0]
                b[p, q] += delta[k, 1]
        if not hi_terms and base.ap is not None:
            ap, bp = base.ap, base.bp       # distortion unchanged: the camera's inverse holds
        else:
            if bbox is None:
                bbox = Box.from_minmax(int(np.floor(x[finite].min())),
                                       int(np.floor(y[finite].min())),
                                       int(np.ceil(x[finite].max())), int(np.ceil(y[finite].max())))
            corners = bbox.grow(max(2, int(0.02 * max(bbox.width, bbox.height)))).corners()
            gx, gy = np.meshgrid(np.linspace(corners[0, 0], corners[1, 0], 48),
                                 np.linspace(corners[0, 1], corners[2, 1], 48))
            inv_order = inverse_order if inverse_order is not None else sip_order + 2
            ap, bp, inverse_err = _fit_inverse(a, b, inv_order, gx.ravel() - crpix[0],
                                               gy.ravel() - crpix[1], norm)
        wcs.sip = Sip(a, b, ap, bp, wcs.wcs.crpix)
    else:
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.set()
    radial = np.hypot(resid[used, 0], resid[used, 1])
    return TanSipFit(wcs=wcs, used=used, residual_arcsec=resid,
                     rms_arcsec=float(np.sqrt(np.mean(radial**2))), sip_order=sip_order,
                     inverse_max_error_pix=inverse_err, held_out_arcsec=held_out, n_params=n_par,
                     model=model)


def _pairs(src_x, src_y, ref_ra, ref_dec, weights):
    x = np.asarray(src_x, dtype=float).ravel()
    y = np.asarray(src_y, dtype=float).ravel()
    ra = np.asarray(ref_ra, dtype=float).ravel()
    dec = np.asarray(ref_dec, dtype=float).ravel()
    if not (x.size == y.size == ra.size == dec.size):
        raise ValueError(f"src_x, src_y, ref_ra, ref_dec differ in length: "
                         f"{x.size}, {y.size}, {ra.size}, {dec.size}")
    w = np.ones(x.size) if weights is None else np.asarray(weights, dtype=float).ravel()
    if w.size != x.size:
        raise ValueError(f"weights has length {w.size}, expected {x.size}")
    n_ok = int((np.isfinite(x) & np.isfinite(y) & np.isfinite(ra) & np.isfinite(dec)
                & (w > 0)).sum())
    return x, y, ra, dec, w, n_ok


def fit_tan_sip_detailed(
    src_x: np.ndarray,
    src_y: np.ndarray,
    ref_ra: np.ndarray,
    ref_dec: np.ndarray,
    crpix: tuple[float, float],
    crval: tuple[float, float],
    sip_order: int = 3,
    weights: np.ndarray | None = None,
    *,
    n_sigma: float = 3.0,
    n_clip_iter: int = 3,
    bbox: Box | None = None,
    inverse_order: int | None = None,
) -> TanSipFit:
    """Fit a TAN-SIP WCS from scratch to matched (pixel, sky) pairs, with sigma clipping.

    Parameters
    ----------
    src_x, src_y : numpy.ndarray
        Matched source centroids, 0-based parent pixels, shape (n,).
    ref_ra, ref_dec : numpy.ndarray
        Matching reference positions, degrees, shape (n,).
    crpix : tuple of float
        Reference pixel, **0-based** (x, y) (the FITS header gets ``crpix + 1``); kept fixed.
    crval : tuple of float
        Starting (ra, dec) of the reference pixel, degrees; refined by the fit.
    sip_order : int
        Total polynomial order (1 = plain TAN with a free CD matrix, 2-5 = TAN-SIP).
    weights : numpy.ndarray, optional
        Relative weights (inverse variances) of the pairs, shape (n,).
    n_sigma : float
        Rejection threshold, in MAD-based sigma of the per-axis residuals.
    n_clip_iter : int
        Maximum fit-and-clip passes (0 = no clipping).
    bbox : store.geom.Box, optional
        Detector box over which the inverse polynomials are fitted; defaults to the source extent.
    inverse_order : int, optional
        Order of AP/BP; defaults to ``sip_order + 2`` (``+ 1`` leaves ~0.01 px errors at the
        corners for a few pixels of cubic distortion; ``+ 2`` reaches ~1e-4 px).

    Returns
    -------
    TanSipFit

    Raises
    ------
    ValueError
        If the arrays differ in length, ``sip_order`` is out of range, or there are fewer
        finite pairs than free parameters per axis.
    """
    x, y, ra, dec, w, n_ok = _pairs(src_x, src_y, ref_ra, ref_dec, weights)
    if sip_order not in (1, 2, 3, 4, 5):
        raise ValueError(f"sip_order must be 1..5, got {sip_order}")
    n_par = len(_terms(sip_order, 0))
    if n_ok < n_par:
        raise ValueError(f"{n_ok} usable pairs cannot constrain a sip_order={sip_order} "
                         f"fit ({n_par} parameters per axis)")
    base = _Distortion((float(crpix[0]), float(crpix[1])))
    return _fit_poly_wcs(x, y, ra, dec, w, crval, base, sip_order, n_sigma=n_sigma,
                         n_clip_iter=n_clip_iter, bbox=bbox, inverse_order=inverse_order,
                         model="tan-sip")


def fit_tan_sip(
    src_x: np.ndarray,
    src_y: np.ndarray,
    ref_ra: np.ndarray,
    ref_dec: np.ndarray,
    crpix: tuple[float, float],
    crval: tuple[float, float],
    sip_order: int = 3,
    weights: np.ndarray | None = None,
    **kwargs,
) -> WCS:
    """Fit a TAN-SIP WCS to matched pairs; the WCS of :func:`fit_tan_sip_detailed` (same parameters).

    Examples
    --------
    >>> w = WCS(naxis=2); w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    >>> w.wcs.crval = [30.0, 10.0]; w.wcs.crpix = [100.5, 100.5]
    >>> w.wcs.cd = [[-5e-5, 1e-6], [1e-6, 5e-5]]
    >>> x, y = np.meshgrid(np.arange(0, 200, 20.0), np.arange(0, 200, 25.0))
    >>> ra, dec = w.all_pix2world(x.ravel(), y.ravel(), 0)
    >>> fit = fit_tan_sip(x.ravel(), y.ravel(), ra, dec, (99.5, 99.5), (30.001, 9.999), sip_order=1)
    >>> bool(np.allclose(fit.wcs.crval, [30.0, 10.0]) and np.allclose(fit.wcs.cd, w.wcs.cd))
    True
    """
    return fit_tan_sip_detailed(src_x, src_y, ref_ra, ref_dec, crpix, crval, sip_order, weights,
                                **kwargs).wcs


def fit_camera_wcs(
    src_x: np.ndarray,
    src_y: np.ndarray,
    ref_ra: np.ndarray,
    ref_dec: np.ndarray,
    camera_wcs: WCS,
    correction_order: int = 1,
    weights: np.ndarray | None = None,
    *,
    n_sigma: float = 3.0,
    n_clip_iter: int = 3,
    bbox: Box | None = None,
    inverse_order: int | None = None,
) -> TanSipFit:
    """Fit CRVAL and CD on top of a camera-model WCS, keeping its distortion (an affine fit).

    The camera model's CRPIX and SIP polynomials (pixel space, about CRPIX) are kept; the fit
    finds the affine map from its focal plane ``(u + A, v + B)`` to the tangent plane (CRVAL
    shift and the four CD elements: 6 parameters).  With ``correction_order`` k >= 2 a SIP
    correction of orders 2..k is fitted too and added to the camera's A and B.

    Parameters
    ----------
    src_x, src_y : numpy.ndarray
        Matched source centroids, 0-based parent pixels, shape (n,).
    ref_ra, ref_dec : numpy.ndarray
        Matching reference positions, degrees, shape (n,).
    camera_wcs : astropy.wcs.WCS
        The camera-model (header) WCS: TAN-SIP, or plain TAN (no distortion to keep).
    correction_order : int
        1 = affine only; 2-5 = affine plus a SIP correction of that total order.
    weights : numpy.ndarray, optional
        Relative weights (inverse variances) of the pairs, shape (n,).
    n_sigma, n_clip_iter, bbox, inverse_order
        As in :func:`fit_tan_sip_detailed`; ``bbox`` and ``inverse_order`` only matter when the
        distortion changes (``correction_order >= 2``, or a camera WCS without AP/BP).

    Returns
    -------
    TanSipFit
        ``model`` is ``"affine"`` or ``"affine+sip<k>"``; ``sip_order`` is the order of the
        returned SIP polynomials (the camera's, or ``correction_order`` if higher).

    Raises
    ------
    ValueError
        If the arrays differ in length, ``correction_order`` is out of range, or there are
        fewer usable pairs than free parameters per axis.

    Examples
    --------
    >>> cam = WCS(naxis=2); cam.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    >>> cam.wcs.crval = [30.0, 10.0]; cam.wcs.crpix = [-50.0, 2100.0]
    >>> cam.wcs.cd = [[-5.6e-5, 0.0], [0.0, 5.6e-5]]
    >>> a = np.zeros((4, 4)); b = np.zeros((4, 4)); a[3, 0] = a[1, 2] = b[2, 1] = b[0, 3] = 1e-10
    >>> cam.sip = Sip(a, b, None, None, cam.wcs.crpix); cam.wcs.set()
    >>> true = cam.deepcopy(); true.wcs.crval = [30.0003, 9.9998]
    >>> true.wcs.cd = np.array(cam.wcs.cd) @ [[1.0, 1e-3], [-1e-3, 1.0]]; true.wcs.set()
    >>> x, y = np.random.default_rng(0).uniform(0, 2047, (2, 10))
    >>> ra, dec = true.all_pix2world(x, y, 0)
    >>> fit = fit_camera_wcs(x, y, ra, dec, cam, bbox=Box(0, 0, 2048, 2048))
    >>> r1, d1 = fit.wcs.all_pix2world([0, 2047], [0, 2047], 0)
    >>> r2, d2 = true.all_pix2world([0, 2047], [0, 2047], 0)
    >>> fit.model, bool(np.allclose(r1, r2, atol=1e-9) and np.allclose(d1, d2, atol=1e-9))
    ('affine', True)
    """
    x, y, ra, dec, w, n_ok = _pairs(src_x, src_y, ref_ra, ref_dec, weights)
    if correction_order not in (1, 2, 3, 4, 5):
        raise ValueError(f"correction_order must be 1..5, got {correction_order}")
    n_par = 3 + len(_terms(correction_order, 2))
    if n_ok < n_par:
        raise ValueError(f"{n_ok} usable pairs cannot constrain a correction_order="
                         f"{correction_order} camera fit ({n_par} parameters per axis)")
    crpix = (float(camera_wcs.wcs.crpix[0]) - 1.0, float(camera_wcs.wcs.crpix[1]) - 1.0)
    dist = camera_distortion(camera_wcs)
    if dist is None:
        base = _Distortion(crpix)
    else:
        sip = camera_wcs.sip
        has_inv = sip.ap is not None and sip.bp is not None and (np.any(sip.ap) or np.any(sip.bp))
        base = _Distortion(crpix, dist[0], dist[1], np.array(sip.ap, float) if has_inv else None,
                           np.array(sip.bp, float) if has_inv else None)
    start = camera_wcs.wcs.crval
    model = "affine" if correction_order == 1 else f"affine+sip{correction_order}"
    return _fit_poly_wcs(x, y, ra, dec, w, (float(start[0]), float(start[1])), base,
                         correction_order, n_sigma=n_sigma, n_clip_iter=n_clip_iter, bbox=bbox,
                         inverse_order=inverse_order, model=model)
