"""The survey simulator: the ground truth every processing step is checked against.

``simulate_survey(repo, preset="demo", seed=0)`` draws a survey (camera,
visits, sky), renders every detector of every visit as a ``post_isr_image``
and writes it, a Gaia-like ``reference_catalog`` and the truth tables through
the store.  The layers are usable on their own, in memory:

* :func:`plan_survey` -> :class:`SurveyPlan` (camera, visits with their
  true PSF, WCS, zero points and sky, the sky catalog);
* :func:`render_exposure` -> :class:`RenderedExposure` (one detector-visit);
* :func:`true_psf_kernel` / :class:`TruePsf` (pixel-integrated true PSF);
* :mod:`sample_data.truth` (truth tables).

Modules: ``config`` (presets), ``camera``, ``optics`` and ``wcs``, ``psf``
and ``moments``, ``sky``, ``observing``, ``plan``, ``render``, ``artefacts``,
``scene``, ``truth``, ``refcat``, ``survey``.
"""

from .config import (
    PRESETS,
    ArtefactConfig,
    CameraConfig,
    ObservingConfig,
    PsfConfig,
    RefcatConfig,
    SkyConfig,
    SurveyConfig,
    get_preset,
)
from .moments import AdaptiveMoments, adaptive_moments
from .observing import Visit
from .plan import SurveyPlan, plan_survey
from .psf import PsfField, TruePsf, true_psf_kernel
from .scene import RenderedExposure, render_exposure
from .survey import DATASET_TYPES, RunNames, SurveyResult, simulate_survey

__all__ = [
    "DATASET_TYPES",
    "PRESETS",
    "AdaptiveMoments",
    "ArtefactConfig",
    "CameraConfig",
    "ObservingConfig",
    "PsfConfig",
    "PsfField",
    "RefcatConfig",
    "RenderedExposure",
    "RunNames",
    "SkyConfig",
    "SurveyConfig",
    "SurveyPlan",
    "SurveyResult",
    "TruePsf",
    "Visit",
    "adaptive_moments",
    "get_preset",
    "plan_survey",
    "render_exposure",
    "simulate_survey",
    "true_psf_kernel",
]
