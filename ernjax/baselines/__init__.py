"""Baselines that are not neural networks: radiomics features (`features`) for a classical model."""
