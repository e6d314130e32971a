// Package origdst recovers where a redirected sandbox packet was really
// going and answers from there: the local address of a transparently accepted
// TCP connection, the IP_ORIGDSTADDR of a redirected UDP datagram, and a UDP
// reply whose source is that original ip:port, so the sandbox's resolver
// accepts it. paddockd's listeners and the proxy's DNS guard share it.
package origdst
