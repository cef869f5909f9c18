"""``Language``: the common language ids of the CAMB.AI API (re-exported by ``camb_async``)."""

from __future__ import annotations

import enum

__all__ = ["Language"]


class Language(enum.IntEnum):
    """Common language ids of the CAMB.AI API (on the wire a language is an integer id).

    Not exhaustive: the API knows about 150 (``GET /source-languages`` and
    ``GET /target-languages`` list them); every language argument also takes a plain ``int``.
    Member names are the locale in upper case with ``_``.
    """

    EN_US = 1
    AF_ZA = 2
    AM_ET = 3
    AR_AE = 4
    AR_BH = 5
    AR_DZ = 6
    AR_EG = 7
    AR_IQ = 8
    AR_JO = 9
    AR_KW = 10
    AR_LB = 11
    AR_LY = 12
    AR_MA = 13
    AR_OM = 14
    AR_QA = 15
    DE_DE = 31
    EN_GB = 35
    ES_ES = 54
    ES_MX = 58
    FR_FR = 76
    HI_IN = 81
    IT_IT = 87
    JA_JP = 88
    KO_KR = 94
    PT_BR = 111
    RU_RU = 114
    TR_TR = 131
    ZH_CN = 139
    ZH_HK = 145
    ZH_TW = 146
    PA_IN = 148
    SA_IN = 149
    AR_XA = 150
    TL_PH = 151
