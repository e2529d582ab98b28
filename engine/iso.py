"""ISO reference data: currency minor units (ISO 4217) and country codes (ISO 3166-1).

Kept as plain tables so validation needs no network and no extra package.
Fund, metal and testing codes (XAU, XTS, ...) are not payment currencies and
are left out.
"""

from __future__ import annotations

_CURRENCIES_2 = """
AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP BYN BZD
CAD CDF CHE CHF CHW CNY COP COU CRC CUC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL
GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD
LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN
PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL
THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED VES WST XCD XCG YER ZAR ZMW ZWG ZWL
"""
_CURRENCIES_0 = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_CURRENCIES_3 = "BHD IQD JOD KWD LYD OMR TND"
_CURRENCIES_4 = "CLF UYW"

#: ISO 4217 alphabetic code -> number of minor-unit digits (JPY 0, CNY 2, KWD 3).
CURRENCY_EXPONENTS: dict[str, int] = {
    **{code: 2 for code in _CURRENCIES_2.split()},
    **{code: 0 for code in _CURRENCIES_0.split()},
    **{code: 3 for code in _CURRENCIES_3.split()},
    **{code: 4 for code in _CURRENCIES_4.split()},
}

#: ISO 3166-1 alpha-2 codes, plus XK (Kosovo), which card networks use.
COUNTRIES: frozenset[str] = frozenset(
    """
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS
BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE
EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM
HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC
LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA
NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW
SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO
TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW XK
""".split()
)

#: Codes people write for a country that ISO 3166-1 spells otherwise: code -> (ISO code, the country).
COUNTRY_ALIASES: dict[str, tuple[str, str]] = {
    "UK": ("GB", "the United Kingdom"),
    "EL": ("GR", "Greece"),
}


def country_hint(code: str) -> str:
    """What to write instead of a country code that is not ISO 3166-1 ('UK' -> 'GB'), or ''."""
    if code in COUNTRY_ALIASES:
        iso, country = COUNTRY_ALIASES[code]
        return f"the ISO 3166-1 code of {country} is '{iso}', not '{code}'"
    if code.upper() in COUNTRIES:
        return f"codes are upper case: '{code.upper()}'"
    return ""
