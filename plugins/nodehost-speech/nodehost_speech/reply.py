"""ReplyText: turn what was heard into the sentence to say back."""

from __future__ import annotations

import nodehost


class ReplyText(nodehost.Node):
    def process(self, data: nodehost.RuntimeData, port: str) -> nodehost.RuntimeData | None:
        heard = data.as_text().strip()
        if not heard:
            return None
        # str.replace, not str.format: braces in recognized text must not break the template.
        reply = self.params.template.replace("{text}", heard)
        language = getattr(data.metadata, "language", None)
        self.logger.info("said: %s", reply)
        return nodehost.RuntimeData.text(reply, language=language)
