# Campus in a container: built from this repository, run as an unprivileged
# user, data under /var/lib/campus.
#
#   docker build -t campus .
#   docker run -p 8080:8080 -v campus-data:/var/lib/campus campus
#
# Configure it with CAMPUS_* variables (docs/operations.md); the compose file
# in deploy/ runs it with PostgreSQL, Redis and an S3-compatible store.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p campus \
 && install -D -m 0755 target/release/campus /out/campus \
 && /out/campus completions bash > /out/campus.bash \
 && /out/campus man > /out/campus.1

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/campus --create-home --shell /usr/sbin/nologin campus
COPY --from=build /out/campus /usr/local/bin/campus
COPY --from=build /out/campus.bash /usr/share/bash-completion/completions/campus
COPY --from=build /out/campus.1 /usr/share/man/man1/campus.1
USER campus
WORKDIR /var/lib/campus
ENV CAMPUS_DATA_DIR=/var/lib/campus \
    CAMPUS_LISTEN=0.0.0.0:8080 \
    CAMPUS_LOG_FORMAT=json
VOLUME ["/var/lib/campus"]
EXPOSE 8080 9090
# Ready, not just alive: a node whose dependencies are down is restarted
# by nobody, but taken out of rotation by its orchestrator.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${CAMPUS_HEALTH_PORT:-8080} && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/campus"]
CMD ["serve"]
