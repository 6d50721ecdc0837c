"""Conversations the template and tokenization tests render: one turn, a system prompt with two rounds, a tool
call with its result, and a reply with a call."""

CALL = {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}
CONVERSATIONS = {
    "single": [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5."}],
    "system_multi_turn": [
        {"role": "system", "content": "你是一个简洁的助手。"},
        {"role": "user", "content": "今天会下雨吗?"},
        {"role": "assistant", "content": "不会,是晴天。"},
        {"role": "user", "content": "适合出去玩吗?"},
        {"role": "assistant", "content": "非常适合。"},
    ],
    "tool_call": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "It is 21 degrees in Paris."},
    ],
    "text_and_call": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL]},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."},
    ],
}
