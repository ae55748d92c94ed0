"""Backend-specific implementations, chosen once at start-up from the config and the platform (select.py) and
handed to the model as its `Ops` or to the train step: the CPU's products (cpu_matmul.py) and attention
(cpu_attention.py) with their own gradients, one flat all-reduce for data parallelism over CPU devices
(cpu_data_parallel.py), a CPU host split into devices (cpu_devices.py), and cuDNN's attention on NVIDIA GPUs."""
