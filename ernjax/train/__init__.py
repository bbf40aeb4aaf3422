"""Training: from a config and a workdir to a scored model, one module a concern.

objective  class weights, the class-weighted cross-entropy, learning-rate schedule, optimizer
steps      the model, the jit-compiled data-parallel train and eval steps, the mesh, placing data
loop       train_and_evaluate: setup and resume, the loop (NaN guard, validation, early stopping,
           checkpoints), the final evaluation of the selected checkpoint
logs       console progress (throughput, ETA) and TensorBoard event files
"""
