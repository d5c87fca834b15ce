"""The network (an x-transformers decoder), the fast cached decoder, the checkpoint format."""
