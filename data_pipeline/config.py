"""The `data` section of the configuration: which documents the loader reads and how it cuts them into
batches."""

import ml_collections


def default_data_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            # 'builtin': the generated corpus of data_pipeline/builtin_corpus.py (smoke runs, tests).
            # 'mixture': the ArrayRecord corpora of the mixture manifest `data.mixture`
            # (data_pipeline/mixture.py).
            "source": "builtin",
            # Seed of the document shuffle; every epoch of every corpus is reshuffled from it
            # deterministically.
            "seed": 0,
            "builtin": {
                # Seed of the corpus generator: the documents themselves.
                "seed": 1234,
                "num_documents": 20000,
                "num_validation_documents": 200,
                # Filler sentences after each fact: 0..max_fillers. ask_all_facts: every person is asked about all
                # three of their facts, not one (a denser in-context recall signal for eval.recall).
                "max_fillers": 2,
                "ask_all_facts": False,
                # People per document, drawn from min_people..max_people (one: no NAME to match).
                "min_people": 2,
                "max_people": 4,
            },
            # Path of a mixture manifest (YAML); relative paths inside it are resolved against its `root`.
            "mixture": "",
            # SentencePiece model; empty means the one named by the mixture manifest. Its SHA-256 must equal
            # the one recorded in every corpus manifest.
            "tokenizer": "",
            # Fraction of each corpus's documents held out for validation (a fixed, seed-independent draw), at
            # most `validation_max_documents` of them.
            "validation_fraction": 0.01,
            "validation_max_documents": 10000,
            # Document reader threads per corpus (grain ReadOptions) and the documents they keep ready.
            "read_threads": 0,
            "read_prefetch": 64,
            # grain mp_prefetch worker processes; 0 reads in the training process (deterministic and cheapest
            # on CPU).
            "num_workers": 0,
            # Batches each worker keeps ready.
            "prefetch_buffer_size": 2,
            # Disjoint reading shards of the stream (each shuffles its slice of every epoch and packs on its own);
            # process p of P reads shards [p*S/P, (p+1)*S/P). 0: one per process. A fixed value (a multiple of every
            # process count you will use) makes the batches independent of the process count
            # (data_pipeline/process_shards.py).
            "num_shards": 0,
        }
    )
