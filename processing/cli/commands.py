"""``drp`` commands beyond the store verbs (simulation, processing, release)."""

from __future__ import annotations
