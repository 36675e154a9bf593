using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;

namespace DetoxSharp.Text;

/// <summary>One chat message (<c>{"role": …, "content": …}</c>), as TRL's conversational datasets hold them.</summary>
/// <param name="Role">user, assistant, system, …</param>
/// <param name="Content">The text.</param>
public sealed record ChatMessage(string Role, string Content);

/// <summary>
/// A model's chat template (tokenizer_config.json's <c>chat_template</c>, Jinja2) rendered as transformers'
/// <c>apply_chat_template(messages, tokenize=False, add_generation_prompt=…)</c> does (trim_blocks and lstrip_blocks
/// on). The subset real templates use is implemented: <c>for</c> (with <c>loop.index</c>/<c>index0</c>/<c>first</c>/
/// <c>last</c>/<c>length</c>), <c>if</c>/<c>elif</c>/<c>else</c>, <c>set</c> (also <c>namespace()</c> attributes),
/// expressions with <c>+ - * / // %</c>, <c>~</c>, comparisons, <c>in</c>, <c>and</c>/<c>or</c>/<c>not</c>,
/// <c>x if c else y</c>, subscripts and slices, the filters trim, length, upper, lower, tojson, string, default, first,
/// last, join, replace, the tests defined/none/string/number/mapping/sequence, the string methods strip, lstrip, rstrip,
/// startswith, endswith, split, replace, upper, lower, dict <c>get</c>/<c>items</c>, <c>raise_exception</c>, whitespace
/// control <c>{%-</c>/<c>-%}</c> and comments. Anything else is an <see cref="InvalidInputException"/> naming it.
/// </summary>
public sealed class ChatTemplate
{
    List<Node>? _body;

    /// <summary>The template source.</summary>
    public string Source { get; }
    /// <summary>The <c>bos_token</c> the template sees ("" when the config has none).</summary>
    public string BosToken { get; }
    /// <summary>The <c>eos_token</c> the template sees ("" when the config has none).</summary>
    public string EosToken { get; }
    /// <summary>Where the template came from, for messages.</summary>
    public string Origin { get; }

    /// <summary>A template from its source; it is parsed on first use (<see cref="Parse"/>), which throws
    /// <see cref="InvalidInputException"/> for syntax outside the subset.</summary>
    /// <param name="source">The Jinja2 template.</param>
    /// <param name="bosToken">Value of <c>bos_token</c>.</param>
    /// <param name="eosToken">Value of <c>eos_token</c>.</param>
    /// <param name="origin">File (or other origin) for error messages.</param>
    public ChatTemplate(string source, string bosToken = "", string eosToken = "", string origin = "chat_template")
    {
        Source = source; BosToken = bosToken; EosToken = eosToken; Origin = origin;
    }

    /// <summary>Parses the template (once); <see cref="Render"/> calls it, so a model whose template uses syntax outside
    /// the subset still serves string data.</summary>
    public void Parse()
    {
        if (_body is not null) return;
        var tokens = Lex(Source);
        int pos = 0;
        var body = ParseBlock(tokens, ref pos, []);
        if (pos < tokens.Count) throw Error($"unexpected {{% {tokens[pos].Text} %}}");
        _body = body;
    }

    /// <summary>The chat template of a model directory (its tokenizer_config.json's <c>chat_template</c>, or a
    /// chat_template.jinja / chat_template.json beside it); null when the directory has none (GPT-2).</summary>
    /// <param name="modelDir">The checkpoint directory.</param>
    public static ChatTemplate? FromModelDirectory(string modelDir)
    {
        if (!Directory.Exists(modelDir)) return null;
        var cfgPath = Path.Combine(modelDir, "tokenizer_config.json");
        JsonObject? cfg = null;
        if (File.Exists(cfgPath))
        {
            try { cfg = JsonNode.Parse(File.ReadAllText(cfgPath)) as JsonObject; }
            catch (System.Text.Json.JsonException e) { throw new InvalidInputException($"{cfgPath}: malformed JSON ({e.Message})"); }
        }
        string? source = null, origin = cfgPath;
        switch (cfg?["chat_template"])
        {
            case JsonValue v when v.TryGetValue<string>(out var s): source = s; break;
            case JsonArray named: // [{"name": "default", "template": …}, {"name": "tool_use", …}]
                source = named.OfType<JsonObject>().FirstOrDefault(o => (string?)o["name"] == "default")?["template"]?.GetValue<string>();
                if (source is null) throw new InvalidInputException($"{cfgPath}: chat_template is a list without a \"default\" entry");
                break;
        }
        var jinja = Path.Combine(modelDir, "chat_template.jinja");
        if (source is null && File.Exists(jinja)) { source = File.ReadAllText(jinja); origin = jinja; }
        var json = Path.Combine(modelDir, "chat_template.json");
        if (source is null && File.Exists(json))
        {
            try { source = (JsonNode.Parse(File.ReadAllText(json)) as JsonObject)?["chat_template"]?.GetValue<string>(); origin = json; }
            catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException) { throw new InvalidInputException($"{json}: malformed ({e.Message})"); }
        }
        if (source is null) return null;
        return new ChatTemplate(source, TokenString(cfg?["bos_token"]), TokenString(cfg?["eos_token"]), origin);
    }

    static string TokenString(JsonNode? n) => n switch
    {
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        JsonObject o when o["content"] is JsonValue c && c.TryGetValue<string>(out var s) => s, // AddedToken form
        _ => "",
    };

    /// <summary>Renders a conversation.</summary>
    /// <param name="messages">The messages.</param>
    /// <param name="addGenerationPrompt">Append the opening of an assistant turn (for prompts).</param>
    public string Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt)
    {
        var msgs = messages.Select(m => (object?)new Dictionary<string, object?> { ["role"] = m.Role, ["content"] = m.Content }).ToList();
        var scope = new Scope(null);
        scope.Vars["messages"] = msgs;
        scope.Vars["add_generation_prompt"] = addGenerationPrompt;
        scope.Vars["bos_token"] = BosToken;
        scope.Vars["eos_token"] = EosToken;
        Parse();
        var sb = new StringBuilder();
        Exec(_body!, scope, sb);
        return sb.ToString();
    }

    InvalidInputException Error(string what) => new($"{Origin}: chat template: {what}");

    // ---------------------------------------------------------------- lexing

    enum Kind { Text, Output, Block }
    readonly record struct Token(Kind Kind, string Text, int Line);

    List<Token> Lex(string src)
    {
        var list = new List<Token>();
        int pos = 0;
        bool stripNext = false, trimNewline = false;
        int Line(int at) => 1 + src.AsSpan(0, Math.Min(at, src.Length)).Count('\n');
        while (pos <= src.Length)
        {
            int start = NextTag(src, pos);
            string text = src[pos..(start < 0 ? src.Length : start)];
            if (stripNext) text = text.TrimStart();
            else if (trimNewline) text = text.StartsWith("\r\n") ? text[2..] : text.StartsWith('\n') ? text[1..] : text;
            stripNext = trimNewline = false;
            if (start < 0) { if (text.Length > 0) list.Add(new Token(Kind.Text, text, Line(pos))); break; }
            char kind = src[start + 1];
            bool minusBefore = start + 2 < src.Length && src[start + 2] == '-';
            bool plusBefore = start + 2 < src.Length && src[start + 2] == '+';
            if (minusBefore) text = text.TrimEnd();
            else if (kind != '{' && !plusBefore)
            {
                // lstrip_blocks: spaces and tabs from the start of the line up to a block or comment tag
                int nl = text.LastIndexOf('\n');
                var tail = text[(nl + 1)..];
                if ((nl >= 0 || pos == 0) && tail.All(c => c is ' ' or '\t')) text = text[..(nl + 1)];
            }
            if (text.Length > 0) list.Add(new Token(Kind.Text, text, Line(pos)));
            string close = kind switch { '{' => "}}", '%' => "%}", _ => "#}" };
            int end = FindClose(src, start + 2, close, kind == '#');
            if (end < 0) throw Error($"line {Line(start)}: unclosed {src.Substring(start, 2)}");
            int innerStart = start + 2 + (minusBefore || plusBefore ? 1 : 0);
            bool minusAfter = end > innerStart && src[end - 1] == '-';
            string inner = src[innerStart..(minusAfter ? end - 1 : end)].Trim();
            if (kind == '{') list.Add(new Token(Kind.Output, inner, Line(start)));
            else if (kind == '%') list.Add(new Token(Kind.Block, inner, Line(start)));
            stripNext = minusAfter;
            trimNewline = !minusAfter && kind != '{'; // trim_blocks
            pos = end + 2;
        }
        return list;
    }

    static int NextTag(string s, int from)
    {
        for (int i = from; i + 1 < s.Length; i++)
            if (s[i] == '{' && s[i + 1] is '{' or '%' or '#') return i;
        return -1;
    }

    static int FindClose(string s, int from, string close, bool comment)
    {
        char quote = '\0';
        for (int i = from; i + 1 < s.Length; i++)
        {
            char c = s[i];
            if (!comment && quote != '\0') { if (c == '\\') i++; else if (c == quote) quote = '\0'; continue; }
            if (!comment && c is '\'' or '"') { quote = c; continue; }
            if (c == close[0] && s[i + 1] == close[1]) return i;
        }
        return -1;
    }

    // ---------------------------------------------------------------- statements

    abstract record Node;
    sealed record TextNode(string Text) : Node;
    sealed record OutputNode(Expr Value) : Node;
    sealed record IfNode(List<(Expr Cond, List<Node> Body)> Branches, List<Node>? Else) : Node;
    sealed record ForNode(string[] Targets, Expr Iterable, Expr? Filter, List<Node> Body, List<Node>? Else) : Node;
    sealed record SetNode(string Name, string? Attribute, Expr Value) : Node;

    List<Node> ParseBlock(List<Token> tokens, ref int pos, string[] enders)
    {
        var nodes = new List<Node>();
        while (pos < tokens.Count)
        {
            var t = tokens[pos];
            if (t.Kind == Kind.Text) { nodes.Add(new TextNode(t.Text)); pos++; continue; }
            if (t.Kind == Kind.Output) { nodes.Add(new OutputNode(ParseExpr(t.Text, t.Line))); pos++; continue; }
            var word = FirstWord(t.Text);
            if (enders.Contains(word)) return nodes;
            pos++;
            switch (word)
            {
                case "if":
                {
                    var branches = new List<(Expr, List<Node>)>();
                    List<Node>? elseBody = null;
                    var cond = ParseExpr(t.Text[2..], t.Line);
                    while (true)
                    {
                        var body = ParseBlock(tokens, ref pos, ["elif", "else", "endif"]);
                        branches.Add((cond, body));
                        if (pos >= tokens.Count) throw Error($"line {t.Line}: {{% if %}} without {{% endif %}}");
                        var end = tokens[pos++];
                        var w = FirstWord(end.Text);
                        if (w == "elif") { cond = ParseExpr(end.Text[4..], end.Line); continue; }
                        if (w == "else")
                        {
                            elseBody = ParseBlock(tokens, ref pos, ["endif"]);
                            if (pos >= tokens.Count) throw Error($"line {t.Line}: {{% if %}} without {{% endif %}}");
                            pos++;
                        }
                        break;
                    }
                    nodes.Add(new IfNode(branches, elseBody));
                    break;
                }
                case "for":
                {
                    var rest = t.Text[3..];
                    int inAt = FindKeyword(rest, "in");
                    if (inAt < 0) throw Error($"line {t.Line}: expected 'for X in Y'");
                    var targets = rest[..inAt].Split(',').Select(s => s.Trim()).ToArray();
                    if (targets.Any(s => !IsIdentifier(s))) throw Error($"line {t.Line}: unsupported loop target '{rest[..inAt].Trim()}'");
                    var iterSrc = rest[(inAt + 2)..];
                    Expr? filter = null;
                    if (iterSrc.Contains(" recursive")) throw Error($"line {t.Line}: recursive loops are not supported");
                    var p = new ExprParser(this, iterSrc, t.Line);
                    var iterable = p.ParseNoTernary();
                    if (p.AtKeyword("if")) { p.Next(); filter = p.ParseNoTernary(); }
                    p.ExpectEnd();
                    var body = ParseBlock(tokens, ref pos, ["else", "endfor"]);
                    List<Node>? elseBody = null;
                    if (pos >= tokens.Count) throw Error($"line {t.Line}: {{% for %}} without {{% endfor %}}");
                    if (FirstWord(tokens[pos].Text) == "else")
                    {
                        pos++;
                        elseBody = ParseBlock(tokens, ref pos, ["endfor"]);
                        if (pos >= tokens.Count) throw Error($"line {t.Line}: {{% for %}} without {{% endfor %}}");
                    }
                    pos++;
                    nodes.Add(new ForNode(targets, iterable, filter, body, elseBody));
                    break;
                }
                case "set":
                {
                    var rest = t.Text[3..];
                    int eq = FindAssign(rest);
                    if (eq < 0) throw Error($"line {t.Line}: block {{% set %}} … {{% endset %}} is not supported");
                    var target = rest[..eq].Trim();
                    var parts = target.Split('.');
                    if (parts.Length > 2 || parts.Any(s => !IsIdentifier(s.Trim()))) throw Error($"line {t.Line}: unsupported set target '{target}'");
                    nodes.Add(new SetNode(parts[0].Trim(), parts.Length == 2 ? parts[1].Trim() : null, ParseExpr(rest[(eq + 1)..], t.Line)));
                    break;
                }
                case "generation": case "endgeneration": break; // assistant-mask markers: no output
                default:
                    throw Error($"line {t.Line}: unsupported tag {{% {word} %}}");
            }
        }
        if (enders.Length > 0) throw Error($"missing {{% {enders[^1]} %}}");
        return nodes;
    }

    static string FirstWord(string s)
    {
        int i = 0;
        while (i < s.Length && (char.IsLetterOrDigit(s[i]) || s[i] == '_')) i++;
        return s[..i];
    }

    static bool IsIdentifier(string s) => s.Length > 0 && (char.IsLetter(s[0]) || s[0] == '_') && s.All(c => char.IsLetterOrDigit(c) || c == '_');

    static int FindKeyword(string s, string kw)
    {
        for (int i = 0; i + kw.Length <= s.Length; i++)
            if (string.CompareOrdinal(s, i, kw, 0, kw.Length) == 0 && (i == 0 || s[i - 1] == ' ') && (i + kw.Length == s.Length || s[i + kw.Length] == ' ')) return i;
        return -1;
    }

    static int FindAssign(string s)
    {
        char quote = '\0';
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            if (quote != '\0') { if (c == quote) quote = '\0'; continue; }
            if (c is '\'' or '"') { quote = c; continue; }
            if (c == '=' && (i + 1 >= s.Length || s[i + 1] != '=') && (i == 0 || s[i - 1] is not ('=' or '!' or '<' or '>'))) return i;
        }
        return -1;
    }

    Expr ParseExpr(string src, int line)
    {
        var p = new ExprParser(this, src, line);
        var e = p.Parse();
        p.ExpectEnd();
        return e;
    }

    // ---------------------------------------------------------------- expressions

    abstract record Expr;
    sealed record Literal(object? Value) : Expr;
    sealed record Name(string Id) : Expr;
    sealed record Attr(Expr Target, string Id) : Expr;
    sealed record Index(Expr Target, Expr Key) : Expr;
    sealed record Slice(Expr Target, Expr? Start, Expr? Stop, Expr? Step) : Expr;
    sealed record Call(Expr Target, List<Expr> Args, List<(string Name, Expr Value)> Kwargs) : Expr;
    sealed record Filter(Expr Target, string Id, List<Expr> Args, int Line) : Expr;
    sealed record Test(Expr Target, string Id, bool Negated, int Line) : Expr;
    sealed record Unary(string Op, Expr Operand) : Expr;
    sealed record Binary(string Op, Expr Left, Expr Right) : Expr;
    sealed record Ternary(Expr Cond, Expr Then, Expr? Else) : Expr;
    sealed record ListLit(List<Expr> Items) : Expr;
    sealed record DictLit(List<(Expr Key, Expr Value)> Items) : Expr;

    sealed class ExprParser
    {
        readonly ChatTemplate _t;
        readonly List<(string Type, string Text)> _toks = [];
        readonly int _line;
        int _i;

        public ExprParser(ChatTemplate t, string src, int line)
        {
            _t = t; _line = line;
            int i = 0;
            while (i < src.Length)
            {
                char c = src[i];
                if (char.IsWhiteSpace(c)) { i++; continue; }
                if (c is '\'' or '"')
                {
                    var sb = new StringBuilder();
                    int j = i + 1;
                    for (; j < src.Length && src[j] != c; j++)
                    {
                        if (src[j] == '\\' && j + 1 < src.Length)
                        {
                            j++;
                            sb.Append(src[j] switch { 'n' => '\n', 't' => '\t', 'r' => '\r', _ => src[j] });
                        }
                        else sb.Append(src[j]);
                    }
                    if (j >= src.Length) throw Err("unterminated string");
                    _toks.Add(("str", sb.ToString()));
                    i = j + 1;
                    continue;
                }
                if (char.IsDigit(c))
                {
                    int j = i;
                    while (j < src.Length && (char.IsDigit(src[j]) || (src[j] == '.' && j + 1 < src.Length && char.IsDigit(src[j + 1])))) j++;
                    _toks.Add(("num", src[i..j]));
                    i = j;
                    continue;
                }
                if (char.IsLetter(c) || c == '_')
                {
                    int j = i;
                    while (j < src.Length && (char.IsLetterOrDigit(src[j]) || src[j] == '_')) j++;
                    _toks.Add(("id", src[i..j]));
                    i = j;
                    continue;
                }
                string[] ops = ["//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "(", ")", "[", "]", "{", "}", ".", ",", ":", "|", "="];
                var op = ops.FirstOrDefault(o => string.CompareOrdinal(src, i, o, 0, o.Length) == 0);
                if (op is null) throw Err($"unexpected character '{c}'");
                if (op == "**") throw Err("operator ** is not supported");
                _toks.Add(("op", op));
                i += op.Length;
            }
        }

        InvalidInputException Err(string what) => _t.Error($"line {_line}: {what}");
        (string Type, string Text) Peek => _i < _toks.Count ? _toks[_i] : ("end", "");
        public (string Type, string Text) Next() => _i < _toks.Count ? _toks[_i++] : throw Err("unexpected end of expression");
        bool AtOp(string op) => Peek.Type == "op" && Peek.Text == op;
        public bool AtKeyword(string kw) => Peek.Type == "id" && Peek.Text == kw;
        void Expect(string op) { if (!AtOp(op)) throw Err($"expected '{op}'{(Peek.Type == "end" ? "" : $" before '{Peek.Text}'")}"); _i++; }
        public void ExpectEnd() { if (Peek.Type != "end") throw Err($"unexpected '{Peek.Text}'"); }

        public Expr Parse()
        {
            var e = ParseNoTernary();
            if (AtKeyword("if"))
            {
                _i++;
                var cond = ParseNoTernary();
                Expr? otherwise = null;
                if (AtKeyword("else")) { _i++; otherwise = Parse(); }
                return new Ternary(cond, e, otherwise);
            }
            return e;
        }

        public Expr ParseNoTernary() => Or();
        Expr Or() { var l = And(); while (AtKeyword("or")) { _i++; l = new Binary("or", l, And()); } return l; }
        Expr And() { var l = Not(); while (AtKeyword("and")) { _i++; l = new Binary("and", l, Not()); } return l; }
        Expr Not() { if (AtKeyword("not")) { _i++; return new Unary("not", Not()); } return Compare(); }

        Expr Compare()
        {
            var l = Concat();
            while (true)
            {
                if (Peek.Type == "op" && Peek.Text is "==" or "!=" or "<" or ">" or "<=" or ">=") { var op = Next().Text; l = new Binary(op, l, Concat()); continue; }
                if (AtKeyword("in")) { _i++; l = new Binary("in", l, Concat()); continue; }
                if (AtKeyword("not") && _i + 1 < _toks.Count && _toks[_i + 1] == ("id", "in")) { _i += 2; l = new Unary("not", new Binary("in", l, Concat())); continue; }
                if (AtKeyword("is"))
                {
                    _i++;
                    bool neg = false;
                    if (AtKeyword("not")) { _i++; neg = true; }
                    var name = Next();
                    if (name.Type != "id") throw Err($"expected a test name after 'is', got '{name.Text}'");
                    l = new Test(l, name.Text, neg, _line);
                    continue;
                }
                return l;
            }
        }

        Expr Concat() { var l = Additive(); while (AtOp("~")) { _i++; l = new Binary("~", l, Additive()); } return l; }
        Expr Additive()
        {
            var l = Multiplicative();
            while (AtOp("+") || AtOp("-")) { var op = Next().Text; l = new Binary(op, l, Multiplicative()); }
            return l;
        }
        Expr Multiplicative()
        {
            var l = UnaryMinus();
            while (AtOp("*") || AtOp("/") || AtOp("//") || AtOp("%")) { var op = Next().Text; l = new Binary(op, l, UnaryMinus()); }
            return l;
        }
        Expr UnaryMinus()
        {
            if (AtOp("-")) { _i++; return new Unary("-", UnaryMinus()); }
            if (AtOp("+")) { _i++; return UnaryMinus(); }
            return Filtered();
        }

        Expr Filtered()
        {
            var e = Postfix(Primary());
            while (AtOp("|"))
            {
                _i++;
                var name = Next();
                if (name.Type != "id") throw Err($"expected a filter name after '|', got '{name.Text}'");
                var args = new List<Expr>();
                if (AtOp("("))
                {
                    var (a, kw) = Arguments();
                    args = a;
                    if (kw.Count > 0) args.AddRange(kw.Select(k => k.Value)); // keyword filter args (e.g. tojson(indent=2)) taken positionally
                }
                e = Postfix(new Filter(e, name.Text, args, _line));
            }
            return e;
        }

        (List<Expr>, List<(string Name, Expr Value)>) Arguments()
        {
            Expect("(");
            var args = new List<Expr>();
            var kwargs = new List<(string Name, Expr Value)>();
            while (!AtOp(")"))
            {
                if (Peek.Type == "id" && _i + 1 < _toks.Count && _toks[_i + 1] == ("op", "="))
                {
                    var n = Next().Text; _i++;
                    kwargs.Add((n, Parse()));
                }
                else args.Add(Parse());
                if (!AtOp(")")) Expect(",");
            }
            _i++;
            return (args, kwargs);
        }

        Expr Postfix(Expr e)
        {
            while (true)
            {
                if (AtOp("."))
                {
                    _i++;
                    var n = Next();
                    if (n.Type != "id") throw Err($"expected an attribute name after '.', got '{n.Text}'");
                    e = new Attr(e, n.Text);
                }
                else if (AtOp("["))
                {
                    _i++;
                    Expr? a = null, b = null, c = null;
                    if (!AtOp(":")) a = Parse();
                    if (AtOp(":"))
                    {
                        _i++;
                        if (!AtOp("]") && !AtOp(":")) b = Parse();
                        if (AtOp(":")) { _i++; if (!AtOp("]")) c = Parse(); }
                        Expect("]");
                        e = new Slice(e, a, b, c);
                    }
                    else { Expect("]"); e = new Index(e, a!); }
                }
                else if (AtOp("("))
                {
                    var (args, kw) = Arguments();
                    e = new Call(e, args, kw);
                }
                else return e;
            }
        }

        Expr Primary()
        {
            var t = Next();
            switch (t.Type)
            {
                case "str":
                {
                    var s = t.Text;
                    while (Peek.Type == "str") s += Next().Text; // adjacent literals concatenate
                    return new Literal(s);
                }
                case "num":
                    return t.Text.Contains('.') ? new Literal(double.Parse(t.Text, CultureInfo.InvariantCulture)) : new Literal(long.Parse(t.Text, CultureInfo.InvariantCulture));
                case "id":
                    return t.Text switch
                    {
                        "true" or "True" => new Literal(true),
                        "false" or "False" => new Literal(false),
                        "none" or "None" => new Literal(null),
                        _ => new Name(t.Text),
                    };
                case "op" when t.Text == "(":
                {
                    var e = Parse();
                    if (AtOp(",")) throw Err("tuples are not supported");
                    Expect(")");
                    return e;
                }
                case "op" when t.Text == "[":
                {
                    var items = new List<Expr>();
                    while (!AtOp("]")) { items.Add(Parse()); if (!AtOp("]")) Expect(","); }
                    _i++;
                    return new ListLit(items);
                }
                case "op" when t.Text == "{":
                {
                    var items = new List<(Expr, Expr)>();
                    while (!AtOp("}")) { var k = Parse(); Expect(":"); items.Add((k, Parse())); if (!AtOp("}")) Expect(","); }
                    _i++;
                    return new DictLit(items);
                }
                default:
                    throw Err($"unexpected '{t.Text}'");
            }
        }
    }

    // ---------------------------------------------------------------- evaluation

    sealed class Undefined
    {
        public static readonly Undefined Value = new();
        public override string ToString() => "";
    }

    sealed class Namespace : Dictionary<string, object?>;

    sealed class Scope(Scope? parent)
    {
        public readonly Dictionary<string, object?> Vars = [];
        public Scope? Parent => parent;
        public object? Get(string name)
        {
            for (var s = this; s is not null; s = s.Parent)
                if (s.Vars.TryGetValue(name, out var v)) return v;
            return Undefined.Value;
        }
    }

    void Exec(List<Node> nodes, Scope scope, StringBuilder sb)
    {
        foreach (var n in nodes)
        {
            switch (n)
            {
                case TextNode t: sb.Append(t.Text); break;
                case OutputNode o: sb.Append(Str(Eval(o.Value, scope))); break;
                case SetNode s:
                {
                    var v = Eval(s.Value, scope);
                    if (s.Attribute is null) scope.Vars[s.Name] = v;
                    else if (scope.Get(s.Name) is Namespace ns) ns[s.Attribute] = v;
                    else throw Error($"set {s.Name}.{s.Attribute}: '{s.Name}' is not a namespace()");
                    break;
                }
                case IfNode i:
                {
                    bool done = false;
                    foreach (var (cond, body) in i.Branches)
                        if (Truthy(Eval(cond, scope))) { Exec(body, scope, sb); done = true; break; }
                    if (!done && i.Else is not null) Exec(i.Else, scope, sb);
                    break;
                }
                case ForNode f:
                {
                    var items = Iterate(Eval(f.Iterable, scope), "for loop");
                    if (f.Filter is not null)
                        items = items.Where(item => { var s = new Scope(scope); Bind(s, f.Targets, item); return Truthy(Eval(f.Filter, s)); }).ToList();
                    if (items.Count == 0) { if (f.Else is not null) Exec(f.Else, scope, sb); break; }
                    for (int k = 0; k < items.Count; k++)
                    {
                        var inner = new Scope(scope);
                        Bind(inner, f.Targets, items[k]);
                        inner.Vars["loop"] = new Dictionary<string, object?>
                        {
                            ["index0"] = (long)k, ["index"] = (long)k + 1, ["first"] = k == 0, ["last"] = k == items.Count - 1,
                            ["length"] = (long)items.Count, ["revindex"] = (long)(items.Count - k), ["revindex0"] = (long)(items.Count - k - 1),
                            ["previtem"] = k > 0 ? items[k - 1] : Undefined.Value, ["nextitem"] = k + 1 < items.Count ? items[k + 1] : Undefined.Value,
                        };
                        Exec(f.Body, inner, sb);
                    }
                    break;
                }
            }
        }
    }

    void Bind(Scope s, string[] targets, object? item)
    {
        if (targets.Length == 1) { s.Vars[targets[0]] = item; return; }
        var parts = Iterate(item, "loop unpacking");
        if (parts.Count != targets.Length) throw Error($"cannot unpack {parts.Count} values into {targets.Length} loop variables");
        for (int i = 0; i < targets.Length; i++) s.Vars[targets[i]] = parts[i];
    }

    List<object?> Iterate(object? v, string where) => v switch
    {
        List<object?> l => l,
        string s => s.Select(c => (object?)c.ToString()).ToList(),
        Dictionary<string, object?> d => d.Keys.Select(k => (object?)k).ToList(),
        Undefined or null => [],
        _ => throw Error($"{where}: {TypeName(v)} is not iterable"),
    };

    static string TypeName(object? v) => v switch
    {
        null => "none", Undefined => "undefined", string => "string", bool => "boolean", long or double => "number",
        List<object?> => "list", Dictionary<string, object?> => "dict", _ => v.GetType().Name,
    };

    static bool Truthy(object? v) => v switch
    {
        null or Undefined => false,
        bool b => b,
        long l => l != 0,
        double d => d != 0,
        string s => s.Length > 0,
        List<object?> l => l.Count > 0,
        Dictionary<string, object?> d => d.Count > 0,
        _ => true,
    };

    static string Str(object? v) => v switch
    {
        null => "None",
        Undefined => "",
        bool b => b ? "True" : "False",
        long l => l.ToString(CultureInfo.InvariantCulture),
        double d => d == Math.Floor(d) && Math.Abs(d) < 1e16 ? d.ToString("0.0", CultureInfo.InvariantCulture) : d.ToString("R", CultureInfo.InvariantCulture),
        string s => s,
        List<object?> l => "[" + string.Join(", ", l.Select(Repr)) + "]",
        Dictionary<string, object?> d => "{" + string.Join(", ", d.Select(kv => Repr(kv.Key) + ": " + Repr(kv.Value))) + "}",
        _ => v.ToString() ?? "",
    };

    static string Repr(object? v) => v is string s ? "'" + s.Replace("\\", "\\\\").Replace("'", "\\'") + "'" : Str(v);

    object? Eval(Expr e, Scope scope)
    {
        switch (e)
        {
            case Literal l: return l.Value;
            case Name n: return scope.Get(n.Id);
            case ListLit l: return l.Items.Select(x => Eval(x, scope)).ToList();
            case DictLit d: return d.Items.ToDictionary(kv => Str(Eval(kv.Key, scope)), kv => Eval(kv.Value, scope));
            case Attr a:
            {
                var t = Eval(a.Target, scope);
                if (t is Dictionary<string, object?> d) return d.TryGetValue(a.Id, out var v) ? v : Undefined.Value;
                return Undefined.Value; // methods are resolved by Call
            }
            case Index ix:
            {
                var t = Eval(ix.Target, scope);
                var k = Eval(ix.Key, scope);
                switch (t)
                {
                    case Dictionary<string, object?> d: return k is string ks && d.TryGetValue(ks, out var v) ? v : Undefined.Value;
                    case List<object?> list when k is long i:
                        if (i < 0) i += list.Count;
                        return i >= 0 && i < list.Count ? list[(int)i] : Undefined.Value;
                    case string s when k is long i:
                        if (i < 0) i += s.Length;
                        return i >= 0 && i < s.Length ? s[(int)i].ToString() : Undefined.Value;
                    case Undefined: return Undefined.Value;
                    default: throw Error($"cannot index {TypeName(t)} with {TypeName(k)}");
                }
            }
            case Slice sl:
            {
                var t = Eval(sl.Target, scope);
                long? Opt(Expr? x) => x is null ? null : Eval(x, scope) is long v ? v : throw Error("slice bounds must be integers");
                long? a = Opt(sl.Start), b = Opt(sl.Stop), step = Opt(sl.Step);
                List<object?> src = t switch
                {
                    List<object?> l => l,
                    string s => s.Select(c => (object?)c.ToString()).ToList(),
                    _ => throw Error($"cannot slice {TypeName(t)}"),
                };
                var picked = PySlice(src, a, b, step ?? 1);
                return t is string ? string.Concat(picked.Select(x => (string)x!)) : picked;
            }
            case Unary u:
            {
                var v = Eval(u.Operand, scope);
                if (u.Op == "not") return !Truthy(v);
                return v switch { long l => (object)(-l), double d => -d, _ => throw Error($"cannot negate {TypeName(v)}") };
            }
            case Ternary t:
                return Truthy(Eval(t.Cond, scope)) ? Eval(t.Then, scope) : t.Else is null ? Undefined.Value : Eval(t.Else, scope);
            case Binary b:
            {
                if (b.Op == "and") { var l = Eval(b.Left, scope); return !Truthy(l) ? l : Eval(b.Right, scope); }
                if (b.Op == "or") { var l = Eval(b.Left, scope); return Truthy(l) ? l : Eval(b.Right, scope); }
                var x = Eval(b.Left, scope);
                var y = Eval(b.Right, scope);
                return BinaryOp(b.Op, x, y);
            }
            case Test t:
            {
                var v = Eval(t.Target, scope);
                bool r = t.Id switch
                {
                    "defined" => v is not Undefined,
                    "undefined" => v is Undefined,
                    "none" => v is null,
                    "string" => v is string,
                    "number" => v is long or double,
                    "integer" => v is long,
                    "float" => v is double,
                    "boolean" => v is bool,
                    "true" => v is true,
                    "false" => v is false,
                    "mapping" => v is Dictionary<string, object?>,
                    "sequence" or "iterable" => v is List<object?> or string or Dictionary<string, object?>,
                    "even" => v is long l && l % 2 == 0,
                    "odd" => v is long l2 && l2 % 2 != 0,
                    _ => throw Error($"line {t.Line}: unsupported test 'is {t.Id}'"),
                };
                return r != t.Negated;
            }
            case Filter f: return ApplyFilter(f, Eval(f.Target, scope), f.Args.Select(a => Eval(a, scope)).ToList());
            case Call c: return EvalCall(c, scope);
        }
        throw Error($"unsupported expression {e.GetType().Name}");
    }

    static List<object?> PySlice(List<object?> src, long? start, long? stop, long step)
    {
        int n = src.Count;
        var r = new List<object?>();
        if (step == 0) return r;
        long Norm(long v, long lo, long hi) { if (v < 0) v += n; return Math.Clamp(v, lo, hi); }
        if (step > 0)
        {
            long a = start is null ? 0 : Norm(start.Value, 0, n), b = stop is null ? n : Norm(stop.Value, 0, n);
            for (long i = a; i < b; i += step) r.Add(src[(int)i]);
        }
        else
        {
            long a = start is null ? n - 1 : Norm(start.Value, -1, n - 1), b = stop is null ? -1 : Norm(stop.Value, -1, n - 1);
            for (long i = a; i > b; i += step) r.Add(src[(int)i]);
        }
        return r;
    }

    object? BinaryOp(string op, object? x, object? y)
    {
        static bool IsNum(object? v) => v is long or double or bool;
        static double D(object? v) => v switch { long l => l, double d => d, bool b => b ? 1 : 0, _ => 0 };
        switch (op)
        {
            case "~": return Str(x) + Str(y);
            case "==": return Eq(x, y);
            case "!=": return !Eq(x, y);
            case "in":
                return y switch
                {
                    string s when x is string sub => s.Contains(sub, StringComparison.Ordinal),
                    List<object?> l => l.Any(i => Eq(i, x)),
                    Dictionary<string, object?> d => x is string k && d.ContainsKey(k),
                    Undefined => false,
                    _ => throw Error($"'in' needs a string, list or dict on the right, got {TypeName(y)}"),
                };
            case "<" or ">" or "<=" or ">=":
            {
                int c = x is string a && y is string b ? string.CompareOrdinal(a, b)
                    : IsNum(x) && IsNum(y) ? D(x).CompareTo(D(y))
                    : throw Error($"cannot compare {TypeName(x)} {op} {TypeName(y)}");
                return op switch { "<" => c < 0, ">" => c > 0, "<=" => c <= 0, _ => c >= 0 };
            }
            case "+":
                if (x is string s1 && y is string s2) return s1 + s2;
                if (x is List<object?> l1 && y is List<object?> l2) return l1.Concat(l2).ToList();
                break;
        }
        if (IsNum(x) && IsNum(y))
        {
            bool ints = x is long or bool && y is long or bool;
            long lx = (long)D(x), ly = (long)D(y);
            switch (op)
            {
                case "+": return ints ? (object)(lx + ly) : D(x) + D(y);
                case "-": return ints ? (object)(lx - ly) : D(x) - D(y);
                case "*": return ints ? (object)(lx * ly) : D(x) * D(y);
                case "/": if (D(y) == 0) throw Error("division by zero"); return D(x) / D(y);
                case "//": if (D(y) == 0) throw Error("division by zero"); return ints ? (object)(long)Math.Floor((double)lx / ly) : Math.Floor(D(x) / D(y));
                case "%":
                    if (D(y) == 0) throw Error("modulo by zero");
                    if (ints) { long m = lx % ly; return (object)(m != 0 && (m < 0) != (ly < 0) ? m + ly : m); }
                    { double m = D(x) % D(y); return m != 0 && (m < 0) != (D(y) < 0) ? m + D(y) : m; }
            }
        }
        if (op == "*" && x is string rep && y is long times) return string.Concat(Enumerable.Repeat(rep, (int)Math.Max(0, times)));
        throw Error($"unsupported operands for {op}: {TypeName(x)} and {TypeName(y)}");
    }

    static bool Eq(object? x, object? y)
    {
        if (x is Undefined || y is Undefined) return x is Undefined && y is Undefined;
        if (x is null || y is null) return x is null && y is null;
        if (x is long or double or bool && y is long or double or bool)
        {
            static double D(object v) => v switch { long l => l, double d => d, bool b => b ? 1 : 0, _ => 0 };
            return D(x) == D(y);
        }
        if (x is string a && y is string b) return a == b;
        if (x is List<object?> l1 && y is List<object?> l2) return l1.Count == l2.Count && l1.Zip(l2).All(p => Eq(p.First, p.Second));
        if (x is Dictionary<string, object?> d1 && y is Dictionary<string, object?> d2)
            return d1.Count == d2.Count && d1.All(kv => d2.TryGetValue(kv.Key, out var v) && Eq(kv.Value, v));
        return false;
    }

    object? ApplyFilter(Filter f, object? v, List<object?> args)
    {
        switch (f.Id)
        {
            case "trim": return Str(v).Trim();
            case "upper": return Str(v).ToUpperInvariant();
            case "lower": return Str(v).ToLowerInvariant();
            case "capitalize": { var s = Str(v); return s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant(); }
            case "string": return Str(v);
            case "length" or "count":
                return v switch
                {
                    string s => (long)s.Length,
                    List<object?> l => (long)l.Count,
                    Dictionary<string, object?> d => (long)d.Count,
                    _ => throw Error($"line {f.Line}: length of {TypeName(v)}"),
                };
            case "tojson": return ToJson(v, args.Count > 0 && args[0] is long indent ? (int)indent : null, 0);
            case "default" or "d":
                return v is Undefined || (args.Count > 1 && Truthy(args[1]) && !Truthy(v)) ? (args.Count > 0 ? args[0] : "") : v;
            case "first": return Iterate(v, "first").FirstOrDefault(Undefined.Value);
            case "last": return Iterate(v, "last").LastOrDefault(Undefined.Value);
            case "list": return Iterate(v, "list");
            case "join": return string.Join(args.Count > 0 ? Str(args[0]) : "", Iterate(v, "join").Select(Str));
            case "replace": return Str(v).Replace(Str(args.ElementAtOrDefault(0)), Str(args.ElementAtOrDefault(1)));
            case "int": return v switch { long l => l, double d => (long)d, string s when long.TryParse(s, out var p) => p, _ => 0L };
        }
        throw Error($"line {f.Line}: unsupported filter '{f.Id}'");
    }

    static string ToJson(object? v, int? indent, int depth)
    {
        string nl(int d) => indent is int n ? "\n" + new string(' ', n * d) : "";
        switch (v)
        {
            case null or Undefined: return "null";
            case bool b: return b ? "true" : "false";
            case long l: return l.ToString(CultureInfo.InvariantCulture);
            case double d: return d.ToString("R", CultureInfo.InvariantCulture);
            case string s: return JsonString(s);
            case List<object?> list:
                if (list.Count == 0) return "[]";
                return "[" + string.Join(indent is null ? ", " : ",", list.Select(x => nl(depth + 1) + ToJson(x, indent, depth + 1))) + nl(depth) + "]";
            case Dictionary<string, object?> dict:
                if (dict.Count == 0) return "{}";
                return "{" + string.Join(indent is null ? ", " : ",", dict.Select(kv => nl(depth + 1) + JsonString(kv.Key) + ": " + ToJson(kv.Value, indent, depth + 1))) + nl(depth) + "}";
            default: return JsonString(v.ToString() ?? "");
        }
    }

    static string JsonString(string s)
    {
        // Python's json.dumps(ensure_ascii=False): escapes quotes, backslashes and control characters only
        var sb = new StringBuilder("\"");
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20) sb.Append($"\\u{(int)c:x4}"); else sb.Append(c);
                    break;
            }
        }
        return sb.Append('"').ToString();
    }

    object? EvalCall(Call c, Scope scope)
    {
        var args = c.Args.Select(a => Eval(a, scope)).ToList();
        if (c.Target is Name fn)
        {
            switch (fn.Id)
            {
                case "raise_exception":
                    throw new InvalidInputException($"{Origin}: the chat template rejected the conversation: {Str(args.FirstOrDefault())}");
                case "namespace":
                {
                    var ns = new Namespace();
                    foreach (var (k, v) in c.Kwargs) ns[k] = Eval(v, scope);
                    return ns;
                }
                case "range":
                {
                    long a = 0, b, step = 1;
                    if (args.Count == 1) b = args[0] as long? ?? 0;
                    else { a = args[0] as long? ?? 0; b = args[1] as long? ?? 0; if (args.Count > 2) step = args[2] as long? ?? 1; }
                    var r = new List<object?>();
                    if (step > 0) for (long i = a; i < b; i += step) r.Add(i);
                    else if (step < 0) for (long i = a; i > b; i += step) r.Add(i);
                    return r;
                }
            }
            throw Error($"unsupported function '{fn.Id}()'");
        }
        if (c.Target is Attr m)
        {
            var target = Eval(m.Target, scope);
            string? Arg(int i) => i < args.Count ? Str(args[i]) : null;
            switch (target)
            {
                case string s:
                    switch (m.Id)
                    {
                        case "strip": return Arg(0) is string cs ? s.Trim(cs.ToCharArray()) : s.Trim();
                        case "lstrip": return Arg(0) is string ls ? s.TrimStart(ls.ToCharArray()) : s.TrimStart();
                        case "rstrip": return Arg(0) is string rs ? s.TrimEnd(rs.ToCharArray()) : s.TrimEnd();
                        case "startswith": return s.StartsWith(Arg(0) ?? "", StringComparison.Ordinal);
                        case "endswith": return s.EndsWith(Arg(0) ?? "", StringComparison.Ordinal);
                        case "upper": return s.ToUpperInvariant();
                        case "lower": return s.ToLowerInvariant();
                        case "replace": return s.Replace(Arg(0) ?? "", Arg(1) ?? "");
                        case "split":
                            return (Arg(0) is string sep ? s.Split(sep) : s.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)).Select(x => (object?)x).ToList();
                    }
                    break;
                case Dictionary<string, object?> d:
                    switch (m.Id)
                    {
                        case "get": return Arg(0) is string k && d.TryGetValue(k, out var v) ? v : args.Count > 1 ? args[1] : null;
                        case "items": return d.Select(kv => (object?)new List<object?> { kv.Key, kv.Value }).ToList();
                        case "keys": return d.Keys.Select(k => (object?)k).ToList();
                        case "values": return d.Values.ToList();
                    }
                    break;
            }
            throw Error($"unsupported method '{m.Id}()' on {TypeName(target)}");
        }
        throw Error("unsupported call");
    }
}
