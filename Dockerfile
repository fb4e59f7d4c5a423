# Builds the chronicle binary for compose.yaml.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p chronicle

FROM debian:bookworm-slim
COPY --from=build /src/target/release/chronicle /usr/local/bin/chronicle
ENTRYPOINT ["chronicle"]
