# A CI image with litegate and its runtime (TensorFlow, LiteRT: from pip) and, for LiteRT's GPU delegate
# without a GPU, Mesa's software Vulkan driver (lavapipe, Mesa >= 24 from bookworm-backports).
#
#   docker build -t litegate .                         # from a checkout of litegate
#   docker build --build-arg LAVAPIPE=0 -t litegate .  # without lavapipe (the GPU delegate is then skipped)
#   docker run --rm -v "$PWD:/work" litegate run release.toml --output reports/release
#
# The entrypoint is litegate. GitLab CI runs its script in a shell, so clear it there:
#   image: {name: litegate, entrypoint: [""]}
FROM python:3.11-slim-bookworm

# lavapipe: scripts/gpu_sim.sh (as `make gpu-sim`) adds bookworm-backports from the mirror this image's own
# apt sources already name; no mirror is written here.
ARG LAVAPIPE=1
COPY scripts/gpu_sim.sh scripts/apt_source.sh /opt/litegate/scripts/
RUN if [ "$LAVAPIPE" = 1 ]; then sh /opt/litegate/scripts/gpu_sim.sh; fi \
    && rm -rf /var/lib/apt/lists/*

# litegate itself, from this checkout (the wheel's contents: the package and its metadata).
COPY pyproject.toml README.md /tmp/litegate-src/
COPY litegate /tmp/litegate-src/litegate
RUN pip install --no-cache-dir /tmp/litegate-src \
    && rm -rf /tmp/litegate-src \
    && litegate --version

WORKDIR /work
ENTRYPOINT ["litegate"]
