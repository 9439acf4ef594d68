"""Sessions, kernels and (next) their portable state: what makes a gateway replica stateless."""
