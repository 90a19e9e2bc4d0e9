# The eddy node image: the static `node` binary (CGO_ENABLED=0) in an empty
# image, with the CA certificates a TLS connection to NATS (--nats-tls-ca
# aside) verifies against, and its data in a volume. containers/build makes
# the build context (.build/) and the image:
#
#	containers/build            # binaries, then images eddy-node:dev and eddy-nats:dev
#
# With a registry at hand, a multi-stage build does it in one Dockerfile
# (not tested here: this machine has no registry to pull golang from):
#
#	FROM golang:1.26 AS build
#	WORKDIR /src
#	COPY . .
#	RUN CGO_ENABLED=0 go build -trimpath -o /node ./cmd/node
#	FROM scratch
#	COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/
#	COPY --from=build /node /node
#	VOLUME /data
#	ENTRYPOINT ["/node"]
#	CMD ["run", "--data-dir", "/data", "--http", "0.0.0.0:8080"]
FROM scratch
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY node /node
VOLUME /data
# HTTP API, gossip (TCP and UDP), Raft.
EXPOSE 8080 7946 7946/udp 8300
ENTRYPOINT ["/node"]
CMD ["run", "--data-dir", "/data", "--http", "0.0.0.0:8080"]
