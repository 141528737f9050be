package org.opensearch.transport.grpc.spi;

/**
 * Stands in for the transport-grpc SPI type of the same name, which Maven Central does not carry.
 * k-NN 3.x builds its gRPC query converter at start (whether or not gRPC runs), so the type must
 * load; nothing here serves gRPC, so nothing ever calls it.
 */
public interface QueryBuilderProtoConverter {}
