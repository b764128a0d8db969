"""OpenAI chat completions ↔ Bedrock Converse, for Claude (and Nova) behind the OpenAI face.

The translation lives in three modules, re-exported here: :mod:`.converse_request` (the request),
:mod:`.converse_response` (the answer and its usage) and :mod:`.converse_stream` (the stream).
"""

from __future__ import annotations

from .converse_request import DEFAULT_MAX_TOKENS as DEFAULT_MAX_TOKENS
from .converse_request import EMPTY_TOOL_RESULT as EMPTY_TOOL_RESULT
from .converse_request import IMAGE_FORMATS as IMAGE_FORMATS
from .converse_request import THINKING_BUDGETS as THINKING_BUDGETS
from .converse_request import converse_request as converse_request
from .converse_response import FINISH_REASONS as FINISH_REASONS
from .converse_response import chat_completion as chat_completion
from .converse_response import finish_reason as finish_reason
from .converse_response import openai_usage as openai_usage
from .converse_response import usage_counts as usage_counts
from .converse_stream import ConverseChatStream as ConverseChatStream
