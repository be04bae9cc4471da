"""What runs keep: the tracking store, the stored models and per-example results, the manifests, the bundles that carry them between stores."""
