using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Models;

/// <summary>
/// What trainers, evaluation and analysis need from a model: a causal language model with named hook points
/// and MLP key/value matrices. GPT-2 implements it; Llama-style families (RMSNorm, rotary positions, gated MLP,
/// grouped-query attention) implement the same surface, so nothing downstream names GPT-2's classes.
/// </summary>
public interface ICausalLM : IDisposable
{
    /// <summary>Family name as in Hugging Face's <c>model_type</c> ("gpt2").</summary>
    string Family { get; }
    /// <summary>Size of the output vocabulary (rows of the unembedding).</summary>
    int VocabSize { get; }
    /// <summary>Width of the residual stream (d_model).</summary>
    int DModel { get; }
    /// <summary>Number of transformer blocks.</summary>
    int NumLayers { get; }
    /// <summary>Attention heads per block (query heads).</summary>
    int NumHeads { get; }
    /// <summary>Neurons per MLP (GPT-2: n_inner, 4·d by default).</summary>
    int MlpDim { get; }
    /// <summary>Longest sequence the model can process (n_positions).</summary>
    int MaxPositions { get; }
    /// <summary>End-of-sequence token id from the config.</summary>
    int EosTokenId { get; }
    /// <summary>Where the parameters live.</summary>
    Device Device { get; }
    /// <summary>The parameters' dtype.</summary>
    ScalarType DType { get; }

    /// <summary>The torch module holding the parameters (for optimizers, train/eval, state dicts).</summary>
    nn.Module Module { get; }

    /// <summary>The model's hook points (TransformerLens-style names; <see cref="HookNames"/>): read or edit activations during a forward pass.</summary>
    HookPoints Hooks { get; }

    /// <summary>
    /// Runs the model. <paramref name="inputIds"/> [batch, T] (int64); <paramref name="attentionMask"/> [batch, past+T]
    /// with 1 for real tokens and 0 for (left) padding, or null; <paramref name="cache"/> holds past keys/values and is
    /// advanced by T. Returns logits [batch, T, vocab] in the model's dtype.
    /// </summary>
    Tensor Forward(Tensor inputIds, Tensor? attentionMask = null, KvCache? cache = null);

    /// <summary>
    /// Runs the model on input embeddings instead of token ids — e.g. a "soft token" <c>p·TokenEmbedding</c>, a mixture
    /// of token embeddings (PPLM's horizon). <paramref name="inputsEmbeds"/> [batch, T, d] in the model's dtype lives in
    /// the token-embedding space: it replaces the lookup <c>TokenEmbedding[ids]</c> and nothing else — the model adds
    /// what it adds to a looked-up token (GPT-2: learned positions past..past+T-1; rotary families: nothing here),
    /// and <c>hook_embed</c> sees <paramref name="inputsEmbeds"/>. Mask and cache as in <see cref="Forward"/>.
    /// Differentiable in <paramref name="inputsEmbeds"/>. Returns logits [batch, T, vocab].
    /// </summary>
    Tensor ForwardEmbeddings(Tensor inputsEmbeds, Tensor? attentionMask = null, KvCache? cache = null);

    /// <summary>Input embedding matrix [vocab, d] (row i = token i's embedding; GPT-2: wte, tied to
    /// <see cref="Unembedding"/>). Live parameter: do not modify in place.</summary>
    Tensor TokenEmbedding { get; }

    /// <summary>
    /// Logits of the last position only, [batch, 1, vocab] — what generation needs. Equal to
    /// <c>Forward(...)[:, -1:]</c>, but a model may skip the final norm and LM head for the other positions; the
    /// <c>ln_final.hook_normalized</c> hook then sees [batch, 1, d] with PastLength = past + T - 1.
    /// </summary>
    Tensor ForwardLast(Tensor inputIds, Tensor? attentionMask = null, KvCache? cache = null)
        => Forward(inputIds, attentionMask, cache).narrow(1, inputIds.shape[1] - 1, 1);

    /// <summary>Like <see cref="Forward"/> but stops at the last block: the residual stream before the final norm
    /// [batch, T, d]. Hooks up to and including the last block's <c>hook_resid_post</c> run. With a
    /// <paramref name="cache"/> the positions continue after the cached ones, as in <see cref="Forward"/>.</summary>
    Tensor ResidualStream(Tensor inputIds, Tensor? attentionMask = null, KvCache? cache = null);

    /// <summary>The residual stream before the final norm [batch, T, d] of sequences in a <paramref name="layout"/> of
    /// explicit positions and attention (several continuations of one prompt side by side in one row: see
    /// <see cref="SequenceLayout"/>). No KV cache; hooks run as usual and see the layout's rows (PastLength 0, the
    /// layout's <see cref="SequenceLayout.Real"/> as their mask).</summary>
    Tensor ResidualStream(Tensor inputIds, SequenceLayout layout);

    /// <summary>Applies the final normalisation (ln_f) — for the logit lens.</summary>
    Tensor ApplyFinalNorm(Tensor residual);

    /// <summary>Unembedding matrix [vocab, d] (GPT-2: tied to the token embedding). Live parameter: do not modify in place.</summary>
    Tensor Unembedding { get; }

    /// <summary>MLP keys of a layer, [d, mlp_dim]: column i is the key k_i whose dot product with the normalised residual
    /// (plus bias) gives neuron i's pre-activation. Live parameter view (GPT-2: mlp.c_fc.weight).</summary>
    Tensor MlpKeys(int layer);

    /// <summary>MLP key biases of a layer, [mlp_dim].</summary>
    Tensor MlpKeyBias(int layer);

    /// <summary>MLP values of a layer, [mlp_dim, d]: row i is the value vector v_i added to the residual stream scaled
    /// by neuron i's activation. Live parameter view (GPT-2: mlp.c_proj.weight).</summary>
    Tensor MlpValues(int layer);

    /// <summary>Name of the parameter <see cref="MlpKeys"/> returns, as in the checkpoint (e.g. h.3.mlp.c_fc.weight).</summary>
    string MlpKeysParameterName(int layer);
    /// <summary>Name of the parameter <see cref="MlpValues"/> returns, as in the checkpoint (e.g. h.3.mlp.c_proj.weight).</summary>
    string MlpValuesParameterName(int layer);

    /// <summary>The matrices of a layer that write into the residual stream — the attention output projection, then the
    /// MLP's output (value) projection — as live views in one layout, for weight-space edits of what the layer writes
    /// (directional ablation).</summary>
    IReadOnlyList<ResidualWriter> ResidualWriters(int layer) =>
        throw new NotSupportedException($"{Family}: no residual writers declared (a family implements ResidualWriters for weight-space ablation)");

    /// <summary>A KV cache (any batch size) for sequences of up to <paramref name="capacity"/> positions.</summary>
    KvCache NewCache(int capacity);

    /// <summary>An independent copy with the same weights (e.g. a frozen reference model).</summary>
    ICausalLM Clone();

    /// <summary>Grows the vocabulary to <paramref name="newSize"/> (e.g. after adding a [TOXIC] special token). New
    /// embedding rows are the mean of the existing rows (a neutral start, as commonly done for added tokens).</summary>
    void ResizeVocabulary(int newSize);

    /// <summary>The family's configuration as written to config.json.</summary>
    System.Text.Json.Nodes.JsonObject ConfigJson();
}

/// <summary>A matrix that writes into the residual stream. <see cref="Weight"/> is a live view [in, d]: row j is what
/// input unit j (an attention head dimension, an MLP neuron) adds to the residual stream per unit of activation — GPT-2's
/// Conv1D weight as stored, an nn.Linear weight transposed — so an in-place edit of the view edits the parameter.
/// <see cref="Bias"/> [d] is the constant the matrix adds, or null when it has none.</summary>
public sealed record ResidualWriter(string Name, Tensor Weight, Tensor? Bias);
