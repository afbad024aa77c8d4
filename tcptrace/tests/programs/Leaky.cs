// A leaky server for tests/code_paths.rs, in C# on Mono. Usage:
// MONO_DEBUG=disable_omit_fp mono --jitmap Leaky.exe PORT (0: any).
//
// Says "listening PORT" once it listens on 127.0.0.1, then serves one
// connection at a time: the first byte picks the handler ('L':
// HandleLegacy, anything else: HandleGood). Both read to EOF through the
// same ReadToEnd; only HandleGood closes. After each, says "leaked" or
// "closed".
//
// Mono writes its --jitmap through stdio and does not flush it: the
// methods compiled last are not in the file until more are. After each
// connection the server compiles enough other methods that Mono writes
// out the ones the connection compiled, as a busy server's would be.
using System;
using System.Collections.Generic;
using System.IO;
using System.Net;
using System.Net.Sockets;
using System.Reflection;
using System.Runtime.CompilerServices;

class Program
{
    // Leaked clients stay referenced, so no finalizer closes them.
    static readonly List<TcpClient> Kept = new List<TcpClient>();

    [MethodImpl(MethodImplOptions.NoInlining)]
    static int ReadToEnd(Stream stream)
    {
        var buffer = new byte[4096];
        int total = 0;
        int n;
        while ((n = stream.Read(buffer, 0, buffer.Length)) > 0)
            total += n;
        return total;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    static void HandleLegacy(TcpClient client)
    {
        ReadToEnd(client.GetStream());
        // The bug: the client is kept and never closed.
        Kept.Add(client);
        Console.WriteLine("leaked");
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    static void HandleGood(TcpClient client)
    {
        ReadToEnd(client.GetStream());
        client.Close();
        Console.WriteLine("closed");
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    static void Serve(TcpClient client)
    {
        var first = new byte[1];
        int n = client.GetStream().Read(first, 0, 1);
        if (n == 1 && first[0] == (byte)'L')
            HandleLegacy(client);
        else
            HandleGood(client);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    static int Touch<T>(T value)
    {
        return value.GetHashCode();
    }

    static readonly Type[] ValueTypes = {
        typeof(int), typeof(long), typeof(short), typeof(byte), typeof(sbyte),
        typeof(uint), typeof(ulong), typeof(ushort), typeof(char), typeof(bool),
        typeof(float), typeof(double), typeof(decimal), typeof(DateTime),
        typeof(TimeSpan), typeof(Guid),
    };
    static int compiled;

    // Each value-type instantiation of Touch is compiled apart: a line of
    // the map each, about 5 KiB for 32 of them, past Mono's stdio buffer.
    static void WriteJitMap()
    {
        var touch = typeof(Program).GetMethod("Touch", BindingFlags.NonPublic | BindingFlags.Static);
        var pair = typeof(KeyValuePair<,>);
        int n = ValueTypes.Length;
        for (int i = 0; i < 32; i++, compiled++)
        {
            var inner = pair.MakeGenericType(ValueTypes[compiled / n % n], ValueTypes[compiled % n]);
            var outer = pair.MakeGenericType(ValueTypes[compiled / (n * n) % n], inner);
            touch.MakeGenericMethod(outer).Invoke(null, new[] { Activator.CreateInstance(outer) });
        }
    }

    static void Main(string[] args)
    {
        if (args.Length != 1)
        {
            Console.Error.WriteLine("usage: Leaky.exe PORT");
            Environment.Exit(2);
        }
        var listener = new TcpListener(IPAddress.Loopback, int.Parse(args[0]));
        listener.Start();
        Console.WriteLine("listening " + ((IPEndPoint)listener.LocalEndpoint).Port);
        while (true)
        {
            Serve(listener.AcceptTcpClient());
            WriteJitMap();
        }
    }
}
