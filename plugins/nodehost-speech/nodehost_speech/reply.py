"""ReplyText: turn what was heard into the sentence to say back."""

from __future__ import annotations

from pydantic import BaseModel

import nodehost


class ReplyTextParams(BaseModel):
    """The params of ReplyText's manifest, typed (nodehost checks the names match)."""

    template: str = 'You said: {text}'


class ReplyText(nodehost.Node[ReplyTextParams]):
    def process(self, data: nodehost.RuntimeData, port: str) -> nodehost.RuntimeData | None:
        heard = data.as_text().strip()
        if not heard:
            return None
        # str.replace, not str.format: braces in recognized text must not break the template.
        reply = self.params.template.replace("{text}", heard)
        language = getattr(data.metadata, "language", None)
        self.logger.info("said: %s", reply)
        return nodehost.RuntimeData.text(reply, language=language)
