"""edXML-style document metadata (the fields of Vietnam's document exchange format).

They travel in the encrypted payload (``Metadata.fields``), never in the
header: the gateway and the broker never see them.
"""

from __future__ import annotations

import datetime as dt

from keys.errors import UsageError

# slug -> the field as Vietnamese document-management software names it
EDXML_FIELDS = {
    "document_code": "Mã định danh văn bản",
    "notation": "Số, ký hiệu văn bản",
    "document_type": "Loại văn bản",
    "promulgation_date": "Ngày ban hành",
    "promulgation_place": "Nơi ban hành",
    "signer": "Người ký",
    "steering_type": "Loại chỉ đạo",
    "due_date": "Hạn xử lý",
}
DATE_FIELDS = ("promulgation_date", "due_date")
# Status codes (envelopes.notices) -> their edXML names, as document-management software shows them.
STATUS_EDXML = {
    "01": "Đã đến",
    "02": "Từ chối tiếp nhận",
    "03": "Đã tiếp nhận",
    "04": "Phân công",
    "05": "Đang xử lý",
    "06": "Hoàn thành",
    "13": "Yêu cầu thu hồi",
    "15": "Đồng ý thu hồi",
    "16": "Từ chối thu hồi",
}


def edxml_fields(**values: str | dt.date) -> dict[str, str]:
    """Checked edXML fields for ``Client.send(fields=...)``; dates as ISO ``YYYY-MM-DD``."""
    out: dict[str, str] = {}
    for name, value in values.items():
        if name not in EDXML_FIELDS:
            raise UsageError(f"unknown edXML field {name!r}: one of {', '.join(EDXML_FIELDS)}")
        if name in DATE_FIELDS:
            if isinstance(value, dt.date):
                value = value.isoformat()
            try:
                dt.date.fromisoformat(value)
            except ValueError:
                raise UsageError(f"{name} must be a date like 2026-11-28, not {value!r}") from None
        if not isinstance(value, str) or not value.strip():
            raise UsageError(f"{name} must be non-empty text")
        out[name] = value
    return out
