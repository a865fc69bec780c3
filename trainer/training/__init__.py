"""Training (TensorFlow): the configuration (`config`), what a run reads (`inputs`), the models
it builds (`build`), one distributed step (`steps`), the resumable loop (`loop`), run folders on
disk (`runs`), distribution strategies (`strategy`) and the presence-only geo model's own trainer
(`geoprior`). The command is `python -m trainer.train`."""
