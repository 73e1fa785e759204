# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The tool version recorded in every manifest (kept equal to galaxy.yml's version by a test)."""

from __future__ import annotations

TOOL_VERSION = "0.1.0"
