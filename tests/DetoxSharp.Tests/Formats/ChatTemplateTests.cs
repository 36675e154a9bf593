using DetoxSharp.Text;

namespace DetoxSharp.Tests.Formats;

/// <summary>Real models' chat templates (as their tokenizer_config.json hold them) rendered by <see cref="ChatTemplate"/>;
/// every expected string is written out by hand from the template's semantics (transformers renders with trim_blocks
/// and lstrip_blocks), not produced by the code under test.</summary>
public class ChatTemplateTests
{
    // Meta-Llama-3-8B-Instruct
    public const string Llama3 = """{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}""";

    // Llama-2-7b-chat-hf
    public const string Llama2 = """{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}""";

    // zephyr-7b-beta: newlines between the tags (trim_blocks removes the one after each block tag) and real newlines
    // inside the string literals
    public const string Zephyr = "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";

    // Qwen2-Instruct (ChatML with a default system message)
    public const string ChatMl = """{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}""";

    // Qwen2.5-Instruct: whitespace control everywhere, attribute access, undefined `tools`, tojson in a branch not taken
    public const string Qwen25 = """
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
""";

    static readonly ChatMessage Sys = new("system", "Be brief.");
    static readonly ChatMessage User = new("user", " Hi there ");
    static readonly ChatMessage Bot = new("assistant", "Hello!");

    [Fact]
    public void Llama3TrimsContentBeforeConcatenationAndOpensWithBos()
    {
        var t = new ChatTemplate(Llama3, "<|begin_of_text|>", "<|eot_id|>");
        // `message['content'] | trim` binds tighter than `+`: only the content is trimmed
        Assert.Equal("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            + "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            t.Render([Sys, User], addGenerationPrompt: true));
        Assert.Equal("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            + "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>",
            t.Render([Sys, User, Bot], addGenerationPrompt: false));
    }

    [Fact]
    public void Llama2FoldsTheSystemMessageAndRaisesOnBadAlternation()
    {
        var t = new ChatTemplate(Llama2, "<s>", "</s>", "llama2/tokenizer_config.json");
        // strip() acts on the whole folded content, so the user's leading space stays after the system block
        Assert.Equal("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n Hi there [/INST] Hello! </s>", t.Render([Sys, User, Bot], false));
        Assert.Equal("<s>[INST] Hi there [/INST] Hello! </s><s>[INST] More? [/INST]",
            t.Render([User, Bot, new("user", "More?")], true));
        var e = Assert.Throws<InvalidInputException>(() => t.Render([User, new("user", "again")], true));
        Assert.Equal("llama2/tokenizer_config.json: the chat template rejected the conversation: Conversation roles must alternate user/assistant/user/assistant/...", e.Message);
    }

    [Fact]
    public void ZephyrNewlinesFollowTrimBlocks()
    {
        var t = new ChatTemplate(Zephyr, "<s>", "</s>");
        Assert.Equal("<|system|>\nBe brief.</s>\n<|user|>\n Hi there </s>\n<|assistant|>\n", t.Render([Sys, User], true));
        Assert.Equal("<|system|>\nBe brief.</s>\n<|user|>\n Hi there </s>\n<|assistant|>\nHello!</s>\n", t.Render([Sys, User, Bot], false));
    }

    [Fact]
    public void ChatMlAddsItsDefaultSystemMessage()
    {
        var t = new ChatTemplate(ChatMl, "", "<|im_end|>");
        Assert.Equal("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n Hi there <|im_end|>\n<|im_start|>assistant\n",
            t.Render([User], true));
        Assert.Equal("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n Hi there <|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n",
            t.Render([Sys, User, Bot], false));
    }

    [Fact]
    public void Qwen25WhitespaceControlAndUndefinedTools()
    {
        var t = new ChatTemplate(Qwen25, "", "<|im_end|>");
        Assert.Equal("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n Hi there <|im_end|>\n<|im_start|>assistant\n", t.Render([Sys, User], true));
        Assert.Equal("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n Hi there <|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n",
            t.Render([User, Bot], false));
    }

    [Theory]
    [InlineData("{% for m in messages %}{{ loop.index }}/{{ loop.length }}{% if not loop.last %},{% endif %}{% endfor %}", "1/3,2/3,3/3")]
    [InlineData("{% for m in messages %}{% if loop.first %}[{% elif loop.index0 == 1 %}|{% else %};{% endif %}{{ m.role | upper }}{% endfor %}", "[SYSTEM|USER;ASSISTANT")]
    [InlineData("{{ messages | length ~ '-' ~ (messages[-1].content | lower) ~ '-' ~ messages[1]['content'].strip().startswith('Hi') ~ '-' ~ 'x'.endswith('y') }}", "3-hello!-True-False")]
    [InlineData("{{ {'a': 1, 'b': [true, none, 'q\"\\\\']} | tojson }}", "{\"a\": 1, \"b\": [true, null, \"q\\\"\\\\\"]}")]
    [InlineData("{%- set ns = namespace(n=0) -%}\n  {%- for m in messages if m.role != 'system' %}{% set ns.n = ns.n + 1 %}{% endfor -%}\n  {{ ns.n }} {{ 7 // 2 }} {{ -7 % 3 }} {{ 'a' if x is defined else 'b' }}", "2 3 2 b")]
    [InlineData("{# comment #}{{ messages[::-1][0].role }} {{ 'abc'[1:] }} {{ 'b' in 'abc' }} {{ 'z' not in ['a'] }}", "assistant bc True True")]
    [InlineData("  {% if true %}\n    yes\n  {% endif %}\nend", "    yes\nend")] // lstrip_blocks + trim_blocks
    public void Expressions(string template, string expected) =>
        Assert.Equal(expected, new ChatTemplate(template).Render([Sys, User, Bot], false));

    [Theory]
    [InlineData("{% macro f() %}x{% endmacro %}", "unsupported tag {% macro %}")]
    [InlineData("{{ messages | wordcount }}", "unsupported filter 'wordcount'")]
    [InlineData("{{ messages[0].role.title() }}", "unsupported method 'title()' on string")]
    [InlineData("{% for m in messages %}x", "missing {% endfor %}")]
    [InlineData("{{ 2 ** 3 }}", "operator ** is not supported")]
    [InlineData("{{ cycler() }}", "unsupported function 'cycler()'")]
    public void OutsideTheSubsetIsOneClearError(string template, string expected)
    {
        var e = Assert.Throws<InvalidInputException>(() => new ChatTemplate(template, origin: "m/tokenizer_config.json").Render([User], true));
        Assert.StartsWith("m/tokenizer_config.json: chat template: ", e.Message);
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void FromModelDirectoryReadsTemplateAndAddedTokenObjects()
    {
        var dir = Path.Combine(Path.GetTempPath(), "detox-chat-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        Assert.Null(ChatTemplate.FromModelDirectory(dir));
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), new System.Text.Json.Nodes.JsonObject
        {
            ["bos_token"] = new System.Text.Json.Nodes.JsonObject { ["content"] = "<s>", ["lstrip"] = false },
            ["eos_token"] = "</s>",
            ["chat_template"] = new System.Text.Json.Nodes.JsonArray(
                new System.Text.Json.Nodes.JsonObject { ["name"] = "tool_use", ["template"] = "tools" },
                new System.Text.Json.Nodes.JsonObject { ["name"] = "default", ["template"] = Llama2 }),
        }.ToJsonString());
        var t = ChatTemplate.FromModelDirectory(dir)!;
        Assert.Equal(("<s>", "</s>"), (t.BosToken, t.EosToken));
        Assert.Equal("<s>[INST] Hi there [/INST]", t.Render([User], true));
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """{"eos_token": "<|endoftext|>"}""");
        Assert.Null(ChatTemplate.FromModelDirectory(dir));
    }
}
