"""OpenVINO IR (``.xml`` + ``.bin``) from an ONNX file, fp32 or QDQ int8."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from torchslim.errors import ArtifactError
from torchslim.runtime.openvino import import_openvino

__all__ = ["export_openvino"]

logger = logging.getLogger(__name__)


def export_openvino(onnx_path: str | os.PathLike[str], xml_path: str | os.PathLike[str]) -> Path:
    """Convert ``onnx_path`` to an IR at ``xml_path`` (its weights go to the ``.bin`` beside it).

    Weights stay as they are (``compress_to_fp16=False``): fp32 stays fp32, the int8
    initializers of a QDQ model stay int8. Both files are written under temporary names
    and renamed into place, the ``.bin`` first, so a reader never finds an ``.xml``
    pointing at a missing or half-written ``.bin``.
    """
    ov = import_openvino()
    source, xml = Path(onnx_path), Path(xml_path)
    if xml.suffix != ".xml":
        raise ArtifactError(f"OpenVINO IR path must end in .xml, got {xml.name!r}")
    if not source.is_file():
        raise ArtifactError(f"ONNX file not found: {source}; export one with export_onnx first")
    try:
        model = ov.convert_model(str(source))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtifactError(f"OpenVINO cannot convert {source}: {first}") from e
    xml.parent.mkdir(parents=True, exist_ok=True)
    bin_path = xml.with_suffix(".bin")
    with tempfile.TemporaryDirectory(prefix=f".{xml.stem}.", dir=xml.parent) as tmp:
        # the .xml names its .bin by file name, so both temp files share the final stem
        tmp_xml = Path(tmp) / xml.name
        ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
        os.replace(tmp_xml.with_suffix(".bin"), bin_path)
        os.replace(tmp_xml, xml)
    logger.info("exported %s (%d + %d bytes)", xml, xml.stat().st_size, bin_path.stat().st_size)
    return xml
