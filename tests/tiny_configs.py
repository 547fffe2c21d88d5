"""Tiny Transformers configs (as keyword dicts) shared by the tests of the Transformers-user API:
small enough to run in milliseconds, with the special ids (pad 0, bos 1, eos 2) the tests' random
ids stay clear of."""
LLAMA = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, pad_token_id=0)
T5 = dict(vocab_size=99, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
          relative_attention_num_buckets=8, relative_attention_max_distance=20, decoder_start_token_id=0,
          pad_token_id=0, eos_token_id=1, feed_forward_proj="relu")
# Whisper: 2 * max_source_positions log-mel frames of num_mel_bins each
WHISPER = dict(vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
               decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=40, num_mel_bins=8,
               max_source_positions=12, max_target_positions=40, decoder_start_token_id=1, pad_token_id=0,
               bos_token_id=1, eos_token_id=2)
